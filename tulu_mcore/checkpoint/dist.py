"""Checkpoints in megatron-core's torch_dist format, loadable at any TP/PP/VPP/CP/DP layout.

A checkpoint directory holds megatron's files (``metadata.json``, ``.metadata``, ``*.distcp``,
``common.pt``) plus ``tulu_mcore.json``: the architecture, the dtype, and the original HF
``config.json`` when the weights came from one, so that export can reproduce it exactly. Tokenizer and
generation files travel in ``hf/`` beside them. Training checkpoints add the optimizer (sharded,
``fully_reshardable``), small common state (schedule, step, data cursor: inside the DCP files) and each
rank's RNG state (``rng/``). Loading reads every pickle among these files through an allow-list of what
is written here (`tulu_mcore.checkpoint.unpickle`): a crafted checkpoint is refused, not run.

Writes are atomic: everything goes into ``<dir>.partial`` and is renamed into place at the end, so an
interrupted save never leaves a directory that looks complete.
"""

from __future__ import annotations

import errno
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from tulu_mcore import __version__
from tulu_mcore.arch import LlamaArch
from tulu_mcore.checkpoint import integrity, unpickle
from tulu_mcore.errors import CheckpointError

META_FILE = "tulu_mcore.json"
SIDE_DIR = "hf"
FORMAT_VERSION = 1
# Files each rank writes in parallel: 4 measured ~2x faster than 1-2 even on a 2-core machine (the
# writers wait on the disk, not the CPU).
SAVE_THREADS = 4


def sharded_model_state(chunks) -> dict[str, Any]:
    """All chunks' sharded state dicts in one dict (VPP chunks must be loaded in a single call)."""
    from tulu_mcore.models.factory import unwrap

    if len(chunks) == 1:
        return {"model": unwrap(chunks[0]).sharded_state_dict()}
    return {f"model{i}": unwrap(c).sharded_state_dict() for i, c in enumerate(chunks)}


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _own_storage(state: dict[str, Any], chunks, release: bool) -> None:
    """Give every CPU tensor to be saved a storage of its own, one at a time.

    Some sharded tensors are views (the SwiGLU fc1 weight is saved as its gate and up halves).
    torch.save would write a view's whole storage, so megatron's writer clones all views at once:
    about a third of a Llama's weights copied again. Here each view is cloned in turn and, with
    `release` (the model is not needed after saving: conversion), the parameter it came from is freed
    as soon as all of its views are copied, so memory stays at one copy of the model.
    """
    from collections import Counter

    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, apply_factories

    from tulu_mcore.models.factory import unwrap

    apply_factories(state)
    views = [
        st for st in nested_values(state)
        if isinstance(st, ShardedTensor) and st.data is not None and st.data.device.type == "cpu"
        and st.data.untyped_storage().nbytes() != st.data.numel() * st.data.element_size()
    ]
    owners = {p.untyped_storage().data_ptr(): p for c in chunks for p in unwrap(c).parameters()}
    left = Counter(st.data.untyped_storage().data_ptr() for st in views)
    for st in views:
        ptr = st.data.untyped_storage().data_ptr()
        st.data = st.data.clone()
        left[ptr] -= 1
        if release and left[ptr] == 0 and ptr in owners:
            p = owners[ptr]
            p.data = torch.empty(0, dtype=p.dtype, device=p.device)


def _bytes_everywhere(state: dict[str, Any]) -> int:
    """Collective: the bytes of the tensors every rank is about to write."""
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor, is_main_replica

    mine = sum(v.data.numel() * v.data.element_size() for v in nested_values(state)
               if isinstance(v, ShardedTensor) and v.data is not None and is_main_replica(v.replica_id))
    total = torch.tensor([mine], dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(total)
    return int(total.item())


def _size(n: float) -> str:
    return next(f"{n / 2**s:.1f} {u}" for s, u in ((30, "GiB"), (20, "MiB"), (10, "KiB")) if n >= 2**s) \
        if n >= 1024 else f"{int(n)} bytes"


def _no_space(path: Path, need: int, free: int) -> str:
    return (f"no space left on the file system of {path}: the checkpoint needs ~{_size(need)}, {_size(free)} "
            "are free; the checkpoints saved before are untouched. Free space (or lower train.keep_last), then "
            "rerun the same command to resume")


def _check_space(path: Path, need: int) -> None:
    """Collective: refuse to start a save that cannot fit (judged on each rank's file system; all stop)."""
    free = shutil.disk_usage(path).free
    short = torch.tensor([1.0 if free < need else 0.0])
    if dist.is_initialized():
        dist.all_reduce(short, op=dist.ReduceOp.MAX)
    if short.item():
        if _rank() == 0:
            shutil.rmtree(path, ignore_errors=True)
        raise CheckpointError(_no_space(path, need, free))


def _save(state: dict[str, Any], path: Path) -> None:
    """megatron's torch_dist save, synchronous, with parallel file writers."""
    import queue

    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.strategies import filesystem_async
    from megatron.core.dist_checkpointing.strategies.torch import TorchDistSaveShardedStrategy

    # Even a synchronous save collects the writers' results through a multiprocessing Manager, a
    # spawned process that re-imports __main__ (seconds per save). The writers are threads of this
    # process here, so an in-process queue carries the same results.
    if getattr(filesystem_async, "_results_queue", "absent") is None:
        filesystem_async._results_queue = queue.Queue()
    strategy = TorchDistSaveShardedStrategy("torch_dist", 1, thread_count=SAVE_THREADS)
    dist_checkpointing.save(state, str(path), sharded_strategy=strategy)


def save_checkpoint(chunks, out_dir: str | Path, *, arch: LlamaArch, dtype: torch.dtype,
                    hf_config: dict | None = None, side_files: list[Path] = (), extra: dict | None = None,
                    optimizer=None, common: dict | None = None, per_rank: dict | None = None,
                    release: bool = False) -> Path:
    """Collective: every rank writes its shards; rank 0 writes the metadata and renames into place.

    `optimizer`: also save its state; `common`: small picklable state, identical on all ranks;
    `per_rank`: state that differs per rank (RNG); `release=True` frees parameters while saving (for
    conversion: the model is unusable afterwards)."""
    from tulu_mcore.checkpoint.optimizer import SHARDING

    out = Path(out_dir)
    tmp = out.with_name(out.name + ".partial")
    if _rank() == 0:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
    _barrier()
    state = sharded_model_state(chunks)
    if optimizer is not None:
        model_sd = state["model"] if len(chunks) == 1 else state
        state = {**state, "optimizer": optimizer.sharded_state_dict(model_sd, metadata=SHARDING)}
    state.update(common or {})
    _own_storage(state, chunks, release)
    need = _bytes_everywhere(state)
    _check_space(tmp, need)
    try:
        _save(state, tmp)
    except Exception as e:  # megatron's writers report a full disk as an AssertionError about an OSError
        free = shutil.disk_usage(tmp).free
        if free < need or isinstance(e, OSError) and e.errno == errno.ENOSPC:
            shutil.rmtree(tmp, ignore_errors=True)  # the partial save: its space back
            raise CheckpointError(_no_space(tmp, need, free)) from e
        raise
    if per_rank is not None:
        (tmp / "rng").mkdir(exist_ok=True)
        torch.save(unpickle.encode(per_rank), tmp / "rng" / f"rank_{_rank():05d}.pt")
    _barrier()
    world = dist.get_world_size() if dist.is_initialized() else 1
    files = integrity.record_files(tmp, integrity.own_files(tmp, _rank(), world))  # flushed, then summed
    if _rank() == 0:
        meta = {
            "format_version": FORMAT_VERSION,
            "tulu_mcore_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "dtype": str(dtype).removeprefix("torch."),
            "arch": arch.to_dict(),
            "hf_config": hf_config,
            "world_size": dist.get_world_size() if dist.is_initialized() else 1,
            **(extra or {}),
            "files": files,  # name: [bytes, crc32]; checked on resume
        }
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
        if side_files:
            (tmp / SIDE_DIR).mkdir()
            for f in side_files:
                shutil.copy2(f, tmp / SIDE_DIR / Path(f).name)
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
        integrity.sync_dir(out.parent)
    _barrier()
    return out


def read_meta(ckpt_dir: str | Path) -> dict[str, Any]:
    d = Path(ckpt_dir)
    if not (d / META_FILE).exists() and d.with_name(d.name + ".partial").exists():
        raise CheckpointError(f"{d}: an interrupted save left only {d.name}.partial; save again")
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory (expected a checkpoint written by tulu-convert or tulu-train)")
    if not (d / "metadata.json").is_file() or not (d / ".metadata").is_file():
        raise CheckpointError(
            f"{d}: not a megatron torch_dist checkpoint (metadata.json or .metadata missing)"
        )
    meta_path = d / META_FILE
    if not meta_path.is_file():
        raise CheckpointError(f"{meta_path}: not found; this checkpoint was not written by tulu_mcore")
    try:
        meta = json.loads(meta_path.read_text())
        LlamaArch.from_dict(meta["arch"])
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({type(e).__name__}: {e})") from None
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}"
        )
    return meta


def checkpoint_arch(meta: dict[str, Any]) -> LlamaArch:
    return LlamaArch.from_dict(meta["arch"])


def checkpoint_dtype(meta: dict[str, Any]) -> torch.dtype:
    return getattr(torch, meta["dtype"])


def load_model(chunks, ckpt_dir: str | Path) -> None:
    """Collective: load the model weights of a checkpoint into `chunks` at their layout."""
    load_checkpoint(chunks, ckpt_dir)


def load_checkpoint(chunks, ckpt_dir: str | Path, optimizer=None) -> dict:
    """Collective: load the weights (and the optimizer's state) at the current layout. Returns the
    checkpoint's common state and this rank's per-rank state (None when the world size changed)."""
    from megatron.core import dist_checkpointing
    from megatron.core.dist_checkpointing.core import CheckpointingException
    from torch.distributed.checkpoint.api import CheckpointException as DCPException

    from tulu_mcore.checkpoint import optimizer as opt_fix
    from tulu_mcore.models.factory import unwrap
    from tulu_mcore.models.heads import head_of

    meta = read_meta(ckpt_dir)
    unpickle.install()  # every pickle below is read through an allow-list (see unpickle.py)
    unpickle.check_metadata(ckpt_dir)
    sharded = sharded_model_state(chunks)
    model_keys = list(sharded)
    # a reward model starts from a language model's body: its scalar head keeps its initial weights
    skip_head = False
    ckpt_head = meta.get("head", "lm")
    for key, chunk in zip(model_keys, chunks):
        m = unwrap(chunk)
        if not m.post_process:
            continue
        if head_of(m) == "score" and ckpt_head == "lm":
            skip_head = True
            sharded[key] = {k: v for k, v in sharded[key].items() if not k.startswith("output_layer.")}
        elif head_of(m) == "lm" and ckpt_head == "score":
            raise CheckpointError(f"{ckpt_dir}: a reward model (scalar head, no language-model head); it "
                                  "cannot initialise a language model")
    if skip_head and optimizer is not None:
        raise CheckpointError(f"{ckpt_dir}: a language model's checkpoint cannot resume a reward model's run")
    if optimizer is not None:
        opt_fix.allocate_state(optimizer)
        opt_fix.patch_loader()
        model_sd = sharded["model"] if len(chunks) == 1 else dict(sharded)
        sharded["optimizer"] = optimizer.sharded_state_dict(model_sd, is_loading=True, metadata=opt_fix.SHARDING)
    try:
        loaded = dist_checkpointing.load(sharded, str(ckpt_dir))
    except DCPException as e:  # torch DCP wraps what its reader raised (a refused pickle among them)
        raise unpickle.unwrap_dcp_error(e, ckpt_dir) from None
    except CheckpointingException as e:
        raise CheckpointError(f"{ckpt_dir}: {str(e).splitlines()[0]}") from None
    except KeyError as e:  # the optimizer state asked for is not in the checkpoint
        raise CheckpointError(f"{ckpt_dir}: no {e.args[0]} in the checkpoint (a weights-only checkpoint "
                              "cannot resume training; use it as model.init instead)") from None
    for key, chunk in zip(model_keys, chunks):
        unpickle.check_extra_state(loaded[key], ckpt_dir)
        missing, unexpected = unwrap(chunk).load_state_dict(loaded[key], strict=False)
        missing = [k for k in missing if not k.endswith("_extra_state")
                   and not (skip_head and k.startswith("output_layer."))]
        if missing or unexpected:
            raise CheckpointError(
                f"{ckpt_dir}: weights do not match the model (missing {missing[:3]}, "
                f"unexpected {unexpected[:3]})"
            )
    if optimizer is not None:
        opt_fix.follow_current_settings(optimizer, loaded["optimizer"])  # another optim.lr / optim.impl
        optimizer.load_state_dict(loaded["optimizer"])
        opt_fix.unshare_steps(optimizer)
    common = {k: v for k, v in loaded.items() if k not in model_keys and k != "optimizer"}
    rank_file = Path(ckpt_dir) / "rng" / f"rank_{_rank():05d}.pt"
    world = dist.get_world_size() if dist.is_initialized() else 1
    per_rank = None
    if rank_file.is_file() and meta.get("world_size") == world:
        per_rank = unpickle.decode(unpickle.torch_load(rank_file, rank_file, numpy_arrays=True), rank_file)
    return {"common": common, "per_rank": per_rank}
