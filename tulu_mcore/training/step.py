"""One optimizer step through megatron-core's pipeline schedules, and the language-model losses.

Loss normalisation: every micro-batch returns (sum of token losses, normaliser, report) and the model
config sets ``calculate_per_token_loss``; megatron then divides the gradients by the normaliser summed
over all micro-batches and all DP x CP ranks. With the normaliser = trained tokens that is the exact
mean over the global batch's tokens (``token_mean``); with the normaliser = sequences it is Tülu 3's
``sum`` loss (sum over tokens / sequences in the global batch). Either way the gradient does not
depend on the layout or on how conversations were packed. A per-rank ``mean()`` would be wrong under
CP (gradients CP x too large, hidden by Adam and clipping) and under uneven masks.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
import torch.distributed as dist

from tulu_mcore.models.context_parallel import split_for_cp


@dataclass
class StepResult:
    loss: float  # the objective's value: per sequence (sum) or per trained token (token_mean)
    token_mean_loss: float  # mean cross entropy per trained token, whatever the reduction
    num_tokens: int  # trained tokens in the global batch
    num_seqs: int  # sequences in the global batch
    grad_norm: float  # before clipping
    skipped: bool  # the optimizer skipped the update (inf/nan gradients)


def lm_loss(loss_mask: torch.Tensor, num_seqs: int, reduction: str, output_tensor: torch.Tensor):
    """Per-token losses -> (masked sum, normaliser, report) for the schedule.

    `num_seqs` counts the sequences of this micro-batch; under CP every CP rank sees them all, so only
    CP rank 0 reports them (the normaliser is summed over DP x CP)."""
    from megatron.core import parallel_state as ps

    mask = loss_mask.to(output_tensor.device).float()
    total = (output_tensor.float() * mask).sum()
    tokens = mask.sum()
    seqs = torch.tensor(float(num_seqs if ps.get_context_parallel_rank() == 0 else 0), device=total.device)
    normaliser = seqs if reduction == "sum" else tokens
    return total, normaliser.int(), {"lm": torch.stack([total.detach(), tokens, seqs])}


def lm_forward_step(data_iterator, model, reduction: str = "token_mean"):
    """Forward of one padded micro-batch {tokens, labels, loss_mask} ([b, s], full sequences): this CP
    rank's slice goes through the model; labels give per-token cross entropy (vocab-parallel)."""
    from megatron.core import parallel_state as ps

    batch = next(data_iterator)
    cp, cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    local = split_for_cp(batch, cp, cp_rank)
    device = next(model.parameters()).device
    tokens, labels = local["tokens"].to(device), local["labels"].to(device)
    output = model(input_ids=tokens, position_ids=None, attention_mask=None, labels=labels)
    return output, partial(lm_loss, local["loss_mask"], batch["tokens"].shape[0], reduction)


def packed_forward(batch: dict, model, *, labels: bool = True, temperature: float | None = None):
    """Forward of one packed row (see tulu_mcore.data.packing): THD with per-document attention and
    RoPE; the PackedSeqParams carry the global document boundaries on every CP rank. Returns the
    model's output for this CP rank's tokens (per-token cross entropy with `labels`, else the head's
    output) and this rank's slice of the row's per-token tensors. With `temperature`, the cross entropy
    is of the logits divided by temperature + 1e-7 (as Tülu's RL trainer: log-probs comparable with a
    sampling engine's)."""
    from megatron.core import parallel_state as ps
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.utils import get_attr_wrapped_model

    cp, cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    device = next(model.parameters()).device
    cu, cu_p = batch["cu_seqlens"].to(device), batch["cu_seqlens_padded"].to(device)
    local = split_for_cp(batch, cp, cp_rank, cu_seqlens_padded=batch["cu_seqlens_padded"],
                         keys=("tokens", "labels", "loss_mask", "doc_ids", "last_token"))
    psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, cu_seqlens_q_padded=cu_p,
                          cu_seqlens_kv_padded=cu_p, max_seqlen_q=batch["max_seqlen"],
                          max_seqlen_kv=batch["max_seqlen"])
    tempered = labels and temperature is not None
    output = model(input_ids=local["tokens"].to(device), position_ids=None, attention_mask=None,
                   labels=local["labels"].to(device) if labels and not tempered else None, packed_seq_params=psp)
    if tempered and get_attr_wrapped_model(model, "post_process"):  # the last stage returned logits
        output = tempered_cross_entropy(output, local["labels"].to(device), temperature)
    return output, local


def tempered_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """-log softmax(logits / (temperature + 1e-7))[label], logits [b, s, V/tp] split over the tensor-
    parallel ranks; [b, s]."""
    from megatron.core import tensor_parallel

    scaled = (logits.float() / (temperature + 1e-7)).transpose(0, 1).contiguous()
    return tensor_parallel.vocab_parallel_cross_entropy(scaled, labels.transpose(0, 1).contiguous()).transpose(0, 1)


def packed_forward_step(data_iterator, model, reduction: str = "sum"):
    batch = next(data_iterator)
    output, local = packed_forward(batch, model)
    return output, partial(lm_loss, local["loss_mask"], batch["num_seqs"], reduction)


def reduce_report(losses: list[dict], key: str = "lm", size: int = 3) -> torch.Tensor:
    """Sum this rank's micro-batch reports over the global batch and bring the sum to every rank
    (only last-stage TP rank 0 ranks contribute, each for its own DP x CP slice)."""
    from megatron.core import parallel_state as ps

    device = "cuda" if torch.cuda.is_available() and dist.get_backend() == "nccl" else "cpu"
    acc = torch.zeros(size, dtype=torch.float64, device=device)
    if ps.is_pipeline_last_stage(ignore_virtual=True) and ps.get_tensor_model_parallel_rank() == 0:
        for item in losses:
            acc += item[key].to(acc)
    dist.all_reduce(acc)
    return acc.cpu()


def run_schedule(model, microbatches: list[dict], *, seq_length: int, forward_step, forward_only: bool = False,
                 micro_batch_size: int = 1) -> list[dict]:
    """This rank's micro-batches through megatron's pipeline schedule; the loss functions' reports
    (on the last pipeline stage)."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    # interleaved schedules take one iterator per model chunk
    iterators = [iter(microbatches) for _ in model]
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iterators if len(model) > 1 else iterators[0],
        model=model if len(model) > 1 else model[0],
        num_microbatches=len(microbatches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )


def forward_reports(model, microbatches: list[dict], *, seq_length: int, forward_step, key: str = "lm",
                    size: int = 3) -> torch.Tensor:
    """Forward only (held-out data): the loss functions' `key` reports summed over the batch and brought to
    every rank, as reduce_report does after a training step."""
    with torch.no_grad():
        reports = run_schedule(model, microbatches, seq_length=seq_length, forward_step=forward_step,
                               forward_only=True)
    return reduce_report(reports, key, size)


def forward_outputs(model, microbatches: list[dict], *, seq_length: int, labels: bool = True,
                    temperature: float | None = None) -> list | None:
    """Forward only, through the pipeline schedule: each packed micro-batch's output on the last
    pipeline stage (per-token cross entropy [1, s] with `labels`, else the head's output [1, s, 1]);
    None on the other stages, which only pass activations on."""
    from megatron.core import parallel_state as ps

    def step(data_iterator, chunk):
        batch = next(data_iterator)
        output, _ = packed_forward(batch, chunk, labels=labels, temperature=temperature)

        def keep(output_tensor):
            zero = output_tensor.float().sum() * 0.0
            return zero, torch.tensor(1, dtype=torch.int, device=zero.device), {"out": output_tensor.detach().cpu()}

        return output, keep

    with torch.no_grad():
        reports = run_schedule(model, microbatches, seq_length=seq_length, forward_step=step, forward_only=True)
    if not ps.is_pipeline_last_stage(ignore_virtual=True):
        return None
    return [r["out"] for r in reports]


def optimizer_step(model, optimizer, microbatches: list[dict], *, seq_length: int, forward_step,
                   micro_batch_size: int = 1) -> tuple[list[dict], bool, float]:
    """Forward/backward over this rank's micro-batches, then one optimizer step: (reports, whether
    the update was applied, the gradient norm before clipping)."""
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    losses = run_schedule(model, microbatches, seq_length=seq_length, forward_step=forward_step,
                          micro_batch_size=micro_batch_size)
    ok, grad_norm, _ = optimizer.step()
    return losses, bool(ok), float(grad_norm or 0.0)


def train_step(model, optimizer, microbatches: list[dict], *, seq_length: int, micro_batch_size: int,
               forward_step=lm_forward_step, reduction: str = "token_mean") -> StepResult:
    """One language-model optimizer step over this rank's micro-batches."""
    losses, ok, grad_norm = optimizer_step(model, optimizer, microbatches, seq_length=seq_length,
                                           forward_step=partial(forward_step, reduction=reduction),
                                           micro_batch_size=micro_batch_size)
    total, tokens, seqs = reduce_report(losses).tolist()
    norm = seqs if reduction == "sum" else tokens
    return StepResult(
        loss=total / norm if norm else float("nan"),
        token_mean_loss=total / tokens if tokens else float("nan"),
        num_tokens=int(tokens),
        num_seqs=int(seqs),
        grad_norm=grad_norm,
        skipped=not ok,
    )
