"""One trainer per run directory. Rank 0 holds an exclusive lock on ``run.dir/.lock`` while the run is
alive; a second trainer started on the same directory (or a relaunch while ranks of a killed launch
still write there) is refused on every rank with the holder's host and pid, instead of two writers
interleaving checkpoints and metrics. Where the file system does not support locks (some shared file
systems without ``flock``), the run goes on and says so."""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import weakref
from pathlib import Path

import torch.distributed as dist

from tulu_mcore.errors import UserError


def lock_run_dir(owner, run_dir: Path, is_main: bool, log):
    """Collective: take the lock on rank 0; returns the release (also run when `owner` is collected or
    the process ends)."""
    error, release = None, lambda: None
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        path = run_dir / ".lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
            release = weakref.finalize(owner, os.close, fd)
        except OSError as e:
            holder = path.read_text().strip() or "unknown"
            os.close(fd)
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                error = (f"{run_dir} is in use by another trainer (host and pid: {holder}); wait for it to end, "
                         "stop it, or use another run.dir")
            else:
                log(f"warning: cannot lock {path} ({e.strerror}): this file system has no flock; make sure "
                    "no other trainer writes to this run.dir")
    box = [error]
    if dist.is_initialized():
        dist.broadcast_object_list(box, src=0)
    if box[0] is not None:
        raise UserError(box[0])
    return release
