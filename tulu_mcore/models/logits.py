"""Full-vocabulary logits of a model at any layout, assembled on rank 0 (for verification and tests).

The forward goes through megatron-core's pipeline schedule, as training does; the vocabulary shards
(TP), the sequence chunks (CP, zigzag order) and the last pipeline stage's output are then gathered.
This materialises [batch, seq, vocab] on rank 0: a checking tool, not a training path.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from tulu_mcore.models.context_parallel import cp_gather_sequence, split_for_cp


@torch.no_grad()
def full_logits(chunks, tokens: torch.Tensor) -> torch.Tensor | None:
    """Logits [b, s, vocab] (fp32) of `tokens` [b, s] on global rank 0; None on other ranks.
    Leaves the chunks in eval mode."""
    from megatron.core import parallel_state as ps
    from megatron.core.pipeline_parallel import get_forward_backward_func

    cp_group = ps.get_context_parallel_group()
    cp, cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    pp = ps.get_pipeline_model_parallel_world_size()
    b, s = tokens.shape
    device = next(chunks[0].parameters()).device
    tokens = tokens.to(device)

    def step(data_iterator, model):
        batch = split_for_cp({"tokens": next(data_iterator)}, cp, cp_rank)
        return model(input_ids=batch["tokens"], position_ids=None, attention_mask=None), None

    # the interleaved schedule needs a multiple of pp micro-batches: repeat the batch
    n_mb = pp if len(chunks) > 1 else 1
    iters = [iter([tokens] * n_mb) for _ in chunks]
    for c in chunks:
        c.eval()
    outputs = get_forward_backward_func()(
        forward_step_func=step,
        data_iterator=iters if len(chunks) > 1 else iters[0],
        model=chunks if len(chunks) > 1 else chunks[0],
        num_microbatches=n_mb,
        seq_length=s,
        micro_batch_size=b,
        forward_only=True,
    )

    last = ps.is_pipeline_last_stage(ignore_virtual=True)
    first_replica = ps.get_data_parallel_rank() == 0
    result = None
    if last and first_replica:
        local = outputs[0].float()  # [b, s/cp, vocab/tp]
        tp_group = ps.get_tensor_model_parallel_group()
        if ps.get_tensor_model_parallel_world_size() > 1:
            parts = [torch.empty_like(local) for _ in range(dist.get_world_size(tp_group))]
            dist.all_gather(parts, local.contiguous(), group=tp_group)
            local = torch.cat(parts, dim=-1)
        result = cp_gather_sequence(local, cp_group, seq_dim=1)
    # bring the last stage's result (its TP/CP rank 0) to global rank 0
    src = None
    if last and first_replica and ps.get_tensor_model_parallel_rank() == 0 and cp_rank == 0:
        src = dist.get_rank()
    holders = [None] * dist.get_world_size()
    dist.all_gather_object(holders, src)
    src = next(r for r in holders if r is not None)
    if src == 0:
        return result if dist.get_rank() == 0 else None
    if dist.get_rank() == src:
        dist.send(result.contiguous(), dst=0)
        return None
    if dist.get_rank() == 0:
        buf = torch.empty(b, s, _vocab(chunks), dtype=torch.float32, device=device)
        dist.recv(buf, src=src)
        return buf
    return None


def _vocab(chunks) -> int:
    from tulu_mcore.models.factory import unwrap

    return unwrap(chunks[0]).vocab_size
