"""Rollout engines: n sampled responses per prompt, with the sampling log-probs and whether each
response ended (EOS) within the length limit. One interface for every engine:

* ``megatron`` (:mod:`tulu_mcore.rollout.megatron_engine`): megatron-core's static inference context
  (KV cache) on the trainer's own model chunks, in the trainer's processes (no weight push needed).
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
    weight_version: int

    def generate(self, prompts: list[np.ndarray], *, n: int, max_new_tokens: int, temperature: float,
                 seed: int) -> list[list[Rollout]]: ...

    def update_weights(self) -> None: ...
