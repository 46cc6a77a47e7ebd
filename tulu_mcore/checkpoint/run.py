"""A run's checkpoints: ``run.dir/checkpoints/step_00000010/``, the ``latest`` marker, keeping the last K.

Order of a save: every rank writes into ``step_N.partial``, rank 0 renames it to ``step_N``, then
rewrites ``latest`` (a temporary file renamed over the old one), then deletes old checkpoints. A crash
at any point leaves ``latest`` naming a complete checkpoint (or none).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch.distributed as dist

from tulu_mcore.checkpoint.dist import META_FILE, save_checkpoint
from tulu_mcore.checkpoint.integrity import check_files
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
    name = marker.read_text().strip()
    d = root / name
    if not name or "/" in name or name.startswith("."):
        raise CheckpointError(f"{marker} names {name!r}, not a checkpoint of this directory")
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

    def latest_intact(self, log) -> Path | None:
        """Collective: the newest checkpoint whose files are as written (sizes and CRC32s recorded at the
        save), from `latest` back: a damaged one is skipped with a warning naming its bad files."""
        latest = self.latest()
        if latest is None:
            return None
        older = sorted((d for d in self.root.glob("step_*") if d.is_dir() and not d.name.endswith(".partial")
                        and d.name < latest.name), reverse=True)
        for d in [latest, *older]:
            files = json.loads((d / META_FILE).read_text()).get("files") if (d / META_FILE).is_file() else None
            if files is None and d != latest:
                continue  # incomplete, or from before files were recorded: only `latest` is taken as it is
            bad = check_files(d, files or {})
            if not bad:
                if d != latest:
                    log(f"WARNING: resuming from {d.name}, the newest intact checkpoint (the later ones are "
                        "damaged); steps after it are trained again")
                return d
            log(f"WARNING: checkpoint {d} is damaged: {'; '.join(bad[:3])}" + (f" and {len(bad) - 3} more"
                                                                               if len(bad) > 3 else ""))
        raise CheckpointError(f"no intact checkpoint in {self.root}: every one has damaged files (above); "
                              "restore them, or start a new run.dir")

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
