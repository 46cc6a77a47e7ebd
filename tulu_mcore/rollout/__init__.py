"""Rollout engines: n sampled responses per prompt, with the sampling log-probs and whether each
response ended (EOS) within the length limit. One interface for every engine:

* ``megatron`` (:mod:`tulu_mcore.rollout.megatron_engine`): megatron-core's static inference context
  (KV cache) on the trainer's own model chunks, in the trainer's processes (no weight push needed).
* ``vllm`` (:mod:`tulu_mcore.rollout.vllm_engine`): a vLLM engine in its own process and Python
  environment, driven over a socket from global rank 0; weights arrive as HF-named full tensors.

Engines outside the trainer's processes also offer ``submit(...)`` / ``collect()`` (generation that
overlaps training, see :mod:`tulu_mcore.algorithms.rlvr.driver`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np


@dataclass
class Rollout:
    prompt: np.ndarray  # token ids
    response: np.ndarray  # token ids, EOS included when it was generated
    logprobs: np.ndarray  # the engine's log-prob of each response token (under the sampling temperature)
    finished: bool  # EOS generated before max_new_tokens
    weight_version: int  # the weights that generated it


class RolloutEngine(Protocol):
    in_process: bool  # runs in the trainer's processes (each rank generates its own share)
    weight_version: int

    def generate(self, prompts: list[np.ndarray], *, n: int, max_new_tokens: int, temperature: float,
                 seed: int) -> list[list[Rollout]]: ...

    def push_weights(self, chunks, arch) -> int:
        """Collective over the trainer's ranks: the trainer's current weights into the engine (which
        then generates with a new weight_version); returns the bytes sent."""

    def close(self) -> None: ...
