"""HF -> megatron: fill a model built at any layout from an HF directory, reading only this rank's
slices; and the ``tulu-convert hf-to-mcore`` job that saves the result as a torch_dist checkpoint."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import torch.distributed as dist

from tulu_mcore.convert.hf_io import HFCheckpoint
from tulu_mcore.errors import UserError
from tulu_mcore.models.llama.mapping import EMBEDDING, SCORE, find_param, hf_to_local, units
from tulu_mcore.runtime.logs import progress

READ_THREADS = 4


@torch.no_grad()
def load_hf_weights(chunks, hf: HFCheckpoint, head: str = "lm") -> None:
    """Copy this rank's shard of every parameter from `hf` into `chunks` (any TP/PP/VPP/CP/DP).

    `head="score"` (a reward model): the scalar head comes from ``score.weight`` when `hf` is a
    sequence classifier, and keeps its initial weights when `hf` is a causal LM."""
    from megatron.core import parallel_state as ps

    from tulu_mcore.models.factory import segments_of, unwrap

    arch = hf.arch
    tp, tp_rank = ps.get_tensor_model_parallel_world_size(), ps.get_tensor_model_parallel_rank()
    pp, pp_rank = ps.get_pipeline_model_parallel_world_size(), ps.get_pipeline_model_parallel_rank()
    models = [unwrap(c) for c in chunks]
    params = [dict(m.named_parameters()) for m in models]
    filled: list[set[str]] = [set() for _ in models]

    def fill(vp, rule, hf_names, candidates):
        name, p = find_param(params[vp], candidates)
        if p is None:
            raise RuntimeError(f"no parameter among {candidates} in chunk {vp} of pp rank {pp_rank}")
        t = hf_to_local(rule, hf_names, hf, tp_rank, tp, arch)
        if tuple(t.shape) != tuple(p.shape):
            raise RuntimeError(f"{name}: HF slice {tuple(t.shape)} != parameter {tuple(p.shape)}")
        if t.dtype == p.dtype and t.device == p.device and t.is_contiguous():
            p.data = t  # the freshly read tensor becomes the parameter: no second copy in memory
        else:
            p.data.copy_(t)
        filled[vp].add(name)

    # Reads release the GIL: a few threads overlap file reads with the page faults of fresh memory.
    has_score = hf.has("score.weight")
    if head == "lm" and has_score:
        raise UserError(f"{hf.path}: a reward model (score head, no lm_head); it cannot initialise a "
                        "language model")
    mine = [(vp, rule, names, cands) for owner, vp, rule, names, cands
            in units(len(models), arch, pp, segments_of(models[0]), head=head)
            if owner == pp_rank and (rule is not SCORE or has_score)]
    bar = progress(len(mine), "read HF", "param", enabled=dist.get_rank() == 0)
    with ThreadPoolExecutor(max_workers=READ_THREADS) as pool:
        for _ in pool.map(lambda unit: fill(*unit), mine):
            bar.update(1)
    bar.close()
    # Tied embeddings with PP > 1: the last stage keeps its own copy of the embedding as the output
    # layer (megatron keeps the two in sync through the embedding group).
    last = models[-1]
    if arch.tie_word_embeddings and head == "lm" and last.post_process and not last.pre_process:
        fill(len(models) - 1, EMBEDDING, EMBEDDING.hf, ("output_layer.weight",))
    hf.close()
    for vp, p in enumerate(params):
        left = sorted(n for n in set(p) - filled[vp] if not (head == "score" and n.startswith("output_layer.")))
        if left:
            raise RuntimeError(f"parameters not filled from the HF checkpoint: {left[:5]}")


def convert_hf_to_mcore(hf_dir: str, out_dir: str, *, overwrite: bool = False, tp: int = 1, pp: int = 1,
                        vpp: int = 1, pipeline_layout: list[int] | None = None, device: str = "cpu",
                        dtype: str | None = None) -> Path:
    """Read `hf_dir`, build the model at the given layout (the world size of this launch), save a
    torch_dist checkpoint to `out_dir`. Run under torchrun for large models: each rank reads and
    holds only its own slices."""
    from tulu_mcore import runtime
    from tulu_mcore.checkpoint.dist import save_checkpoint
    from tulu_mcore.config.schema import (
        ModelConfig,
        ParallelConfig,
        PrecisionConfig,
        RunConfig,
        RuntimeConfig,
    )
    from tulu_mcore.dtypes import DTYPE_NAMES, TORCH_DTYPES
    from tulu_mcore.models.factory import build_model

    hf = HFCheckpoint(hf_dir)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: exists and is not empty; choose another directory or pass --overwrite")
    params_dtype = dtype or DTYPE_NAMES[hf.dtype]
    cfg = RunConfig(
        model=ModelConfig(name=hf.path.name, arch=hf.arch, attention="sdpa"),
        parallel=ParallelConfig(tp=tp, pp=pp, vpp=vpp, pipeline_layout=pipeline_layout),
        precision=PrecisionConfig(name=params_dtype, params_dtype=params_dtype),
        runtime=RuntimeConfig(device=device),
    )
    rt = runtime.setup(cfg, training=False)
    chunks = build_model(hf.arch, rt.layout, cfg.precision, device=rt.device, attention="sdpa", init=False,
                         head=hf.head)
    load_hf_weights(chunks, hf, head=hf.head)
    return save_checkpoint(
        chunks, out, arch=hf.arch, dtype=TORCH_DTYPES[params_dtype], hf_config=hf.config,
        side_files=hf.side_files(), extra={"source": str(hf.path.resolve()), "head": hf.head}, release=True,
    )

