"""One optimizer step through megatron-core's pipeline schedules, and the language-model loss.

Loss normalisation: every micro-batch returns (sum of token losses, token count) and the config sets
``calculate_per_token_loss``; megatron then divides the gradients by the token count summed over all
micro-batches and all DP x CP ranks. The result is the exact mean over the global batch's trained
tokens at any layout. A per-rank ``mean()`` would be wrong under CP (gradients CP x too large, which
Adam and clipping hide) and under uneven masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from tulu_mcore.models.context_parallel import split_for_cp


@dataclass
class StepResult:
    loss: float  # mean loss per trained token over the global batch
    num_tokens: int  # trained tokens in the global batch
    grad_norm: float  # before clipping
    skipped: bool  # the optimizer skipped the update (inf/nan gradients)


def token_sum_loss(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Per-token losses [b, s] -> (masked sum, token count, report) for the schedule."""
    mask = loss_mask.to(output_tensor.device).float()
    total = (output_tensor.float() * mask).sum()
    count = mask.sum()
    return total, count.int(), {"lm": torch.stack([total.detach(), count])}


def lm_forward_step(data_iterator, model):
    """Forward of one micro-batch {tokens, labels, loss_mask} ([b, s], the full sequence): this CP
    rank's slice goes through the model; labels give per-token cross entropy (vocab-parallel)."""
    from megatron.core import parallel_state as ps

    batch = next(data_iterator)
    cp, cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    local = split_for_cp(batch, cp, cp_rank)
    device = next(model.parameters()).device
    tokens, labels = local["tokens"].to(device), local["labels"].to(device)
    output = model(input_ids=tokens, position_ids=None, attention_mask=None, labels=labels)
    return output, partial(token_sum_loss, local["loss_mask"])


def reduce_report(losses: list[dict], key: str = "lm") -> tuple[float, int]:
    """Sum the (loss sum, token count) reports of this rank's micro-batches over the whole global
    batch and bring the result to every rank (only last-stage TP rank 0 ranks contribute)."""
    from megatron.core import parallel_state as ps

    device = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    acc = torch.zeros(2, dtype=torch.float64, device=device)
    if ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0:
        for item in losses:
            acc += item[key].to(acc)
    dist.all_reduce(acc)
    total, count = acc.tolist()
    return (total / count if count else float("nan")), int(count)


def train_step(model, optimizer, microbatches: list[dict], *, seq_length: int, micro_batch_size: int,
               forward_step=lm_forward_step) -> StepResult:
    """Forward/backward over this rank's micro-batches, then one optimizer step."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    # interleaved schedules take one iterator per model chunk
    iterators = [iter(microbatches) for _ in model]
    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterators if len(model) > 1 else iterators[0],
        model=model if len(model) > 1 else model[0],
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=False,
    )
    ok, grad_norm, _ = optimizer.step()
    loss, n = reduce_report(losses)
    return StepResult(loss=loss, num_tokens=n, grad_norm=float(grad_norm or 0.0), skipped=not ok)
