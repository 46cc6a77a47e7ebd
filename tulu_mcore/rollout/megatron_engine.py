"""The ``megatron`` rollout engine: sampling with megatron-core's static inference context (KV cache)
on the trainer's model chunks, inside the trainer's processes.

Each prompt's n samples form one batch (same length, so no padding): a prefill, then one token per
step for all samples until every one has emitted EOS or reached `max_new_tokens`. Logits are gathered
over TP, so every TP rank draws the same tokens from a generator seeded by (seed, prompt index): ranks
agree without communicating, and a rerun reproduces its samples. Pipeline parallelism is not supported
here (generation would need the stages' point-to-point exchange per token): it is refused.
"""

from __future__ import annotations

import numpy as np
import torch

from tulu_mcore.errors import ConfigError
from tulu_mcore.rollout import Rollout


class MegatronEngine:
    in_process = True

    def __init__(self, chunks, *, eos_id: int, max_sequence_length: int):
        from megatron.core import parallel_state as ps

        if ps.get_pipeline_model_parallel_world_size() > 1 or len(chunks) > 1:
            raise ConfigError("the megatron rollout engine runs with parallel.pp=1 (no pipeline stages)")
        if ps.get_context_parallel_world_size() > 1:
            raise ConfigError("the megatron rollout engine runs with parallel.cp=1")
        self.chunks, self.eos_id, self.max_len = chunks, eos_id, max_sequence_length
        self.weight_version = 0

    def push_weights(self, chunks=None, arch=None) -> int:
        """The engine reads the trainer's weights in place: only the version moves (0 bytes sent)."""
        self.weight_version += 1
        return 0

    def close(self) -> None:
        pass

    @torch.no_grad()
    def generate(self, prompts: list[np.ndarray], *, n: int, max_new_tokens: int, temperature: float = 1.0,
                 seed: int = 0) -> list[list[Rollout]]:
        from tulu_mcore.models.factory import unwrap

        model = self.chunks[0]
        was_training = model.training
        model.eval()
        try:
            return [self._one(unwrap(model), p, n, max_new_tokens, temperature, seed * 1_000_003 + i)
                    for i, p in enumerate(prompts)]
        finally:
            model.train(was_training)

    def _logits(self, model, tokens, positions, ctx) -> torch.Tensor:
        from megatron.core import parallel_state as ps
        from megatron.core.tensor_parallel.mappings import gather_from_tensor_model_parallel_region

        out = model(input_ids=tokens, position_ids=positions, attention_mask=None, inference_context=ctx)
        if ps.get_tensor_model_parallel_world_size() > 1:
            out = gather_from_tensor_model_parallel_region(out)
        return out[:, -1].float()

    def _one(self, model, prompt: np.ndarray, n: int, max_new: int, temperature: float, seed: int) -> list[Rollout]:
        from megatron.core.inference.contexts.static_context import StaticInferenceContext

        device = next(model.parameters()).device
        length = len(prompt)
        if length + max_new > self.max_len:
            raise ValueError(f"a prompt of {length} tokens + {max_new} new tokens exceeds {self.max_len}")
        ctx = StaticInferenceContext(n, length + max_new)
        tokens = torch.as_tensor(prompt, dtype=torch.long, device=device).unsqueeze(0).expand(n, -1).contiguous()
        positions = torch.arange(length, device=device).unsqueeze(0).expand(n, -1)
        gen = torch.Generator(device="cpu").manual_seed(seed)
        logits = self._logits(model, tokens, positions, ctx)
        ctx.sequence_len_offset += length
        out = torch.zeros(n, max_new, dtype=torch.long)
        logps = torch.zeros(n, max_new, dtype=torch.float64)
        done = torch.zeros(n, dtype=torch.bool)
        steps = 0
        for t in range(max_new):
            if temperature > 0:
                logp = torch.log_softmax(logits / temperature, dim=-1).cpu()
                nxt = torch.multinomial(logp.exp(), 1, generator=gen).squeeze(1)
            else:  # greedy; log-probs at temperature 1
                logp = torch.log_softmax(logits, dim=-1).cpu()
                nxt = logp.argmax(-1)
            nxt = torch.where(done, torch.full_like(nxt, self.eos_id), nxt)
            out[:, t] = nxt
            logps[:, t] = logp.gather(1, nxt.unsqueeze(1)).squeeze(1).double()
            steps = t + 1
            done |= nxt == self.eos_id
            if bool(done.all()) or t == max_new - 1:
                break
            pos = torch.full((n, 1), length + t, device=device)
            logits = self._logits(model, nxt.unsqueeze(1).to(device), pos, ctx)
            ctx.sequence_len_offset += 1
        rollouts = []
        for i in range(n):
            row = out[i, :steps].numpy()
            eos = np.flatnonzero(row == self.eos_id)
            end = int(eos[0]) + 1 if len(eos) else steps
            rollouts.append(Rollout(prompt=np.asarray(prompt), response=row[:end].copy(),
                                    logprobs=logps[i, :end].numpy().copy(), finished=bool(len(eos)),
                                    weight_version=self.weight_version))
        return rollouts
