"""Per-sequence quantities of packed rows: sums over each document's tokens, whole across CP ranks.

Preference losses need, per sequence, the sum of its trained tokens' log-probabilities (from the
vocab-parallel cross entropy the model returns: no vocabulary gather) and the count of those tokens;
a reward model needs the score at each sequence's last trained token. Both are sums over a document's
positions. Under context parallelism each CP rank holds part of every document, so the partial sums are
all-reduced over the CP group; the backward is the identity (each rank's tokens get the gradient of
the whole sum), which is exact because every CP rank then computes the same loss from the same sums.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


class _SumOverCP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, group):
        x = x.clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def doc_sums(values: torch.Tensor, doc_ids: torch.Tensor, num_docs: int) -> torch.Tensor:
    """[num_docs] sums of `values` ([1, s] for this CP rank's positions) per document (`doc_ids`),
    whole over the CP group; differentiable."""
    from megatron.core import parallel_state as ps

    values = values.reshape(-1)
    out = torch.zeros(max(num_docs, 1), dtype=values.dtype, device=values.device)
    out = out.index_add(0, doc_ids.reshape(-1).to(values.device), values)[:num_docs]
    if ps.get_context_parallel_world_size() > 1:
        out = _SumOverCP.apply(out, ps.get_context_parallel_group())
    return out


def sequence_logps(output: torch.Tensor, local: dict, num_docs: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(sum of trained-token log-probs, trained-token count) per document of a packed row, from the
    per-token cross entropy `output` of this rank's positions (fp32)."""
    mask = local["loss_mask"].to(output.device).float()
    doc_ids = local["doc_ids"]
    logps = doc_sums(-output.float() * mask, doc_ids, num_docs)
    with torch.no_grad():
        counts = doc_sums(mask, doc_ids, num_docs)
    return logps, counts


def sequence_scores(output: torch.Tensor, local: dict, num_docs: int) -> torch.Tensor:
    """The scalar head's output at each document's last trained token ([b, s, 1] -> [num_docs])."""
    last = local["last_token"].to(output.device).float()
    return doc_sums(output.float().reshape(last.shape) * last, local["doc_ids"], num_docs)


def is_cp_rank0() -> bool:
    """Every CP rank computes the same per-sequence losses: only CP rank 0 counts and reports them."""
    from megatron.core import parallel_state as ps

    return ps.get_context_parallel_rank() == 0
