"""The weight export stream: a live model at any TP/PP/VPP/CP/DP layout -> HF-named full tensors.

``tulu-convert mcore-to-hf`` writes the stream to safetensors; RL weight sync pushes the same stream
into vLLM. Tensors arrive on global rank 0 in checkpoint order (embedding, layers 0..L-1, final norm,
LM head), grouped into buckets of about `bucket_bytes` that end at a decoder layer's end (a bucket
never splits a layer: a receiver that buffers a layer's tensors until it is complete, as vLLM's
layer-wise reload does, is then done with a bucket when it has loaded it).

Only the ranks of the first data-parallel / context-parallel replica take part (the other replicas
hold identical weights). Within it, each parameter is all-gathered over TP on the pipeline stage that
owns it and sent from that stage's TP rank 0 to rank 0; with ``per_stage=True`` nothing is sent: each
stage's TP rank 0 yields the buckets of its own layers (a weight push where every stage sends its own).
"""

from __future__ import annotations

from typing import Iterator

import torch
import torch.distributed as dist

from tulu_mcore.arch import LlamaArch
from tulu_mcore.models.llama.mapping import find_param, hf_shapes, shards_to_hf, units

Bucket = list[tuple[str, torch.Tensor]]


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return int(parts[2]) if parts[:2] == ["model", "layers"] else None


def export_hf_weights(chunks, arch: LlamaArch, *, bucket_bytes: int = 1 << 29,
                      per_stage: bool = False) -> Iterator[Bucket]:
    """Yield buckets of (HF name, full tensor) on global rank 0 (with `per_stage`: on each pipeline
    stage's first rank, that stage's tensors); a collective over the first replica.

    Every rank must exhaust the iterator (the other ranks get nothing from it).
    """
    from megatron.core import parallel_state as ps

    from tulu_mcore.models.factory import segments_of, unwrap

    if ps.get_data_parallel_rank(with_context_parallel=True) != 0:
        return
    models = [unwrap(c) for c in chunks]
    params = [dict(m.named_parameters()) for m in models]
    tp_group = ps.get_tensor_model_parallel_group()
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    pp, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    pp_group = ps.get_pipeline_model_parallel_group()
    is_dst = dist.get_rank() == 0 if not per_stage else tp_rank == 0
    dtype = models[0].config.params_dtype
    device = next(iter(params[0].values())).device
    shapes = hf_shapes(arch)

    bucket: Bucket = []
    size = 0
    for owner_pp, vp, rule, hf_names, candidates in units(len(models), arch, pp, segments_of(models[0])):
        tensors: Bucket = []
        if pp_rank == owner_pp:
            name, p = find_param(params[vp], candidates)
            if p is None:
                raise RuntimeError(f"export: no parameter among {candidates} on pp rank {pp_rank}")
            local = p.detach()
            if tp > 1:
                shards = [torch.empty_like(local) for _ in range(tp)]
                dist.all_gather(shards, local.contiguous(), group=tp_group)
            else:
                shards = [local]
            tensors = shards_to_hf(rule, hf_names, shards, arch) if tp_rank == 0 else []
        if pp > 1 and tp_rank == 0 and owner_pp != 0 and not per_stage:
            # the owner stage's TP rank 0 sends to rank 0 (first stage, same TP/DP/CP coordinate)
            src = dist.get_global_rank(pp_group, owner_pp)
            if pp_rank == owner_pp and not is_dst:
                for _, t in tensors:
                    dist.send(t.contiguous(), dst=0)
                tensors = []
            elif is_dst:
                tensors = []
                for n in hf_names:
                    t = torch.empty(shapes[n], dtype=dtype, device=device)
                    dist.recv(t, src=src)
                    tensors.append((n, t))
        if is_dst and tensors:
            if size >= bucket_bytes and _layer(tensors[0][0]) != _layer(bucket[-1][0]):
                yield bucket
                bucket, size = [], 0
            for n, t in tensors:
                bucket.append((n, t))
                size += t.numel() * t.element_size()
    if is_dst and bucket:
        yield bucket

