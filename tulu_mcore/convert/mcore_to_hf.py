"""megatron -> HF: the ``tulu-convert mcore-to-hf`` job.

The checkpoint is loaded into a model at this launch's layout (one process: the whole model; under
torchrun: each rank its own slices), streamed through :func:`export_hf_weights`, and written by rank 0
as sharded safetensors + index, ``config.json`` (the original one when the weights came from HF) and
the tokenizer/generation files that travelled with the checkpoint.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import torch.distributed as dist

from tulu_mcore.checkpoint.dist import SIDE_DIR, checkpoint_arch, checkpoint_dtype, read_meta
from tulu_mcore.convert.export import export_hf_weights
from tulu_mcore.convert.hf_io import ShardedSafetensorsWriter
from tulu_mcore.errors import UserError
from tulu_mcore.models.llama.mapping import hf_shapes

DEFAULT_MAX_SHARD_BYTES = 2 << 30


def hf_config_for(meta: dict, dtype: torch.dtype) -> dict:
    arch = checkpoint_arch(meta)
    cfg = dict(meta["hf_config"]) if meta.get("hf_config") else arch.to_hf_config(dtype)
    name = str(dtype).removeprefix("torch.")
    keys = [k for k in ("torch_dtype", "dtype") if k in cfg] or ["torch_dtype"]  # transformers 4 / 5
    for k in keys:
        cfg[k] = name
    return cfg


def convert_mcore_to_hf(ckpt_dir: str, out_dir: str, *, overwrite: bool = False, tp: int = 1, pp: int = 1,
                        vpp: int = 1, device: str = "cpu", dtype: str | None = None,
                        max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, progress: bool = True) -> Path:
    from tulu_mcore import runtime
    from tulu_mcore.checkpoint.dist import load_model
    from tulu_mcore.config.schema import ModelConfig, ParallelConfig, PrecisionConfig, RunConfig, RuntimeConfig
    from tulu_mcore.models.factory import DTYPE_NAMES, TORCH_DTYPES, build_model

    meta = read_meta(ckpt_dir)
    arch = checkpoint_arch(meta)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise UserError(f"{out}: exists and is not empty; choose another directory or pass --overwrite")
    params_dtype = dtype or DTYPE_NAMES[checkpoint_dtype(meta)]
    torch_dtype = TORCH_DTYPES[params_dtype]
    cfg = RunConfig(
        model=ModelConfig(name=Path(ckpt_dir).name, arch=arch, attention="sdpa"),
        parallel=ParallelConfig(tp=tp, pp=pp, vpp=vpp),
        precision=PrecisionConfig(name=params_dtype, params_dtype=params_dtype),
        runtime=RuntimeConfig(device=device),
    )
    rt = runtime.setup(cfg, training=False)
    chunks = build_model(arch, rt.layout, cfg.precision, device=rt.device, attention="sdpa", init=False)
    load_model(chunks, ckpt_dir)

    tmp = out.with_name(out.name + ".partial")
    is_main = dist.get_rank() == 0
    writer = None
    if is_main:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        writer = ShardedSafetensorsWriter(tmp, hf_shapes(arch), torch_dtype, max_shard_bytes)
    bar = _progress(len(hf_shapes(arch)), enabled=progress and is_main)
    for bucket in export_hf_weights(chunks, arch):
        for name, t in bucket:
            writer.add(name, t.to(torch_dtype))
            bar.update(1)
    bar.close()
    if is_main:
        writer.finish()
        (tmp / "config.json").write_text(json.dumps(hf_config_for(meta, torch_dtype), indent=2) + "\n")
        side = Path(ckpt_dir) / SIDE_DIR
        if side.is_dir():
            for f in side.iterdir():
                shutil.copy2(f, tmp / f.name)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    dist.barrier()
    return out


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc="export", unit="tensor", disable=not enabled)
