"""A checkpoint's files, checked: each rank records the size and CRC32 of the files it wrote (flushed to
disk first), rank 0 lists them all in the checkpoint's ``tulu_mcore.json``; a resume checks them, the
work split over the ranks, and a damaged checkpoint is named with its first bad files."""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import torch.distributed as dist

CHUNK = 1 << 24


def crc32(path: Path) -> int:
    crc = 0
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            crc = zlib.crc32(block, crc)
    return crc


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def record_files(ckpt: Path, own: list[Path]) -> dict[str, list[int]] | None:
    """Collective: every rank flushes and sums its own files; rank 0 gets {relative name: [size, crc32]}
    of all of them (None on the others)."""
    mine = {}
    for f in own:
        _fsync(f)
        mine[str(f.relative_to(ckpt))] = [f.stat().st_size, crc32(f)]
    if not dist.is_initialized():
        return mine
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, mine)
    return {k: v for part in everyone for k, v in part.items()} if dist.get_rank() == 0 else None


def own_files(ckpt: Path, rank: int, world: int) -> list[Path]:
    """The files rank `rank` wrote: its DCP shards and RNG state; rank 0 also the shared ones."""
    files = sorted(ckpt.glob(f"__{rank}_*.distcp")) + sorted(ckpt.glob(f"rng/rank_{rank:05d}.pt"))
    if rank == 0:
        files += [f for f in sorted(ckpt.iterdir()) if f.is_file() and not f.name.endswith(".distcp")]
    return files


def check_files(ckpt: Path, files: dict[str, list[int]]) -> list[str]:
    """Collective: the files of `files` (from the checkpoint's metadata) that are missing or differ, each
    rank checking every world-size-th one."""
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    bad = []
    for i, (name, (size, crc)) in enumerate(sorted(files.items())):
        if i % world != rank:
            continue
        f = ckpt / name
        if not f.is_file():
            bad.append(f"{name} (missing)")
        elif f.stat().st_size != size:
            bad.append(f"{name} ({f.stat().st_size} bytes, written {size})")
        elif crc32(f) != crc:
            bad.append(f"{name} (contents differ from those written)")
    if not dist.is_initialized():
        return bad
    everyone = [None] * world
    dist.all_gather_object(everyone, bad)
    return sorted(b for part in everyone for b in part)


def sync_dir(path: Path) -> None:
    """The directory entry of a rename, on disk."""
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


