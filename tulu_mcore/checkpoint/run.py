"""A run's checkpoints: ``run.dir/checkpoints/step_00000010/``, the ``latest`` marker, keeping the last K.

Order of a save: every rank writes into ``step_N.partial``, rank 0 renames it to ``step_N``, then
rewrites ``latest`` (a temporary file renamed over the old one), then deletes old checkpoints. A crash
at any point leaves ``latest`` naming a complete checkpoint (or none).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch.distributed as dist

from tulu_mcore.checkpoint.dist import META_FILE, save_checkpoint
from tulu_mcore.errors import CheckpointError

CHECKPOINTS = "checkpoints"
LATEST = "latest"


def step_name(step: int) -> str:
    return f"step_{step:08d}"


def latest_in(root: Path) -> Path | None:
    """The checkpoint `root/latest` names, or None without a marker."""
    marker = root / LATEST
    if not marker.is_file():
        return None
    d = root / marker.read_text().strip()
    if not (d / META_FILE).is_file():
        raise CheckpointError(f"{marker} names {d.name}, which is missing or incomplete")
    return d


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint directory from a run directory, a checkpoints directory or the checkpoint itself."""
    p = Path(path)
    for root in (p / CHECKPOINTS, p):
        found = latest_in(root)
        if found is not None:
            return found
    return p


class RunCheckpointer:
    def __init__(self, run_dir: str | Path, keep_last: int):
        self.root = Path(run_dir) / CHECKPOINTS
        self.keep_last = keep_last

    def latest(self) -> Path | None:
        return latest_in(self.root)

    def save(self, step: int, chunks, **kwargs) -> Path:
        """Collective; see save_checkpoint for the keyword arguments."""
        rank0 = not dist.is_initialized() or dist.get_rank() == 0
        out = save_checkpoint(chunks, self.root / step_name(step), **kwargs)
        if rank0:
            tmp = self.root / f".{LATEST}.tmp"
            tmp.write_text(out.name + "\n")
            os.replace(tmp, self.root / LATEST)
            self._prune(keep=out.name)
        if dist.is_initialized():
            dist.barrier()
        return out

    def _prune(self, keep: str) -> None:
        done = sorted(d for d in self.root.glob("step_*") if d.is_dir() and not d.name.endswith(".partial"))
        for d in done[: max(len(done) - self.keep_last, 0)]:
            if d.name != keep:
                shutil.rmtree(d, ignore_errors=True)
        for d in self.root.glob("step_*.partial"):  # left by a crash during an earlier save
            shutil.rmtree(d, ignore_errors=True)
