"""A verb's work as numbered shards on disk, so that a killed run resumes where it stopped and several
tasks (Slurm tasks, torchrun ranks) share it.

Each stage's items are cut into shards of ``shard_size``; shard k is written whole (a temporary file,
fsynced, then renamed) or not at all, so a rerun skips the shards that exist and loses at most those in
flight. Task t of T takes shards t, t+T, ...; task 0 then waits for every shard and writes the final
files. A stage directory remembers what made it (a fingerprint of its inputs and settings): a rerun with
other settings is refused instead of mixing rows of two configs.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable
from pathlib import Path

from tulu_mcore.errors import UserError


def task_of(cfg) -> tuple[int, int]:
    """(this task, tasks): the config's task/tasks, else torchrun's RANK/WORLD_SIZE (also under srun +
    torchrun), else Slurm's SLURM_PROCID/SLURM_NTASKS, else (0, 1)."""
    env = os.environ
    if cfg.task is not None or cfg.tasks is not None:
        task, tasks = cfg.task or 0, cfg.tasks or 1
    elif "RANK" in env and "WORLD_SIZE" in env:
        task, tasks = int(env["RANK"]), int(env["WORLD_SIZE"])
    elif "SLURM_PROCID" in env and "SLURM_NTASKS" in env:
        task, tasks = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
    else:
        task, tasks = 0, 1
    if not 0 <= task < tasks:
        raise UserError(f"task={task} of tasks={tasks}: expected 0 <= task < tasks")
    return task, tasks


def _me() -> str:
    """This process, unique across the nodes that share an output directory (temporary file names)."""
    return f"{socket.gethostname()}.{os.getpid()}"


def write_jsonl(path: Path, rows) -> None:
    """All rows or nothing: a temporary file, fsynced, renamed over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{_me()}.tmp")
    with open(tmp, "w") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_jsonl(path: Path) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


class Stage:
    def __init__(self, root: Path, name: str, n_items: int, size: int, fingerprint: dict, *, task: int = 0,
                 tasks: int = 1, log: Callable[[str], None] = print):
        self.dir, self.name, self.n, self.size = Path(root) / name, name, n_items, size
        self.task, self.tasks, self.log = task, tasks, log
        self.shards = (n_items + size - 1) // size
        manifest = {"fingerprint": fingerprint, "items": n_items, "shard_size": size}
        path = self.dir / "manifest.json"
        if path.is_file():
            old = json.loads(path.read_text())
            if old != json.loads(json.dumps(manifest)):
                changed = sorted(k for k in set(old["fingerprint"]) | set(fingerprint)
                                 if old["fingerprint"].get(k) != json.loads(json.dumps(fingerprint)).get(k))
                raise UserError(f"{self.dir} holds shards made with other settings ({', '.join(changed) or 'items, shard_size'} "
                                "differ): rerun with the settings it was started with, or use a new out=DIR")
        else:
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".manifest.{_me()}.tmp")
            tmp.write_text(json.dumps(manifest, indent=1))
            os.replace(tmp, path)

    def path(self, k: int) -> Path:
        return self.dir / f"shard-{k:05d}.jsonl"

    def span(self, k: int) -> range:
        return range(k * self.size, min(self.n, (k + 1) * self.size))

    def done(self, k: int) -> bool:
        return self.path(k).is_file()

    def pending(self) -> list[int]:
        return [k for k in range(self.task, self.shards, self.tasks) if not self.done(k)]

    def run(self, make: Callable[[range, int], list[dict]]) -> None:
        """`make(items, k)` for each pending shard of this task, each written as it completes."""
        todo = self.pending()
        mine = len(range(self.task, self.shards, self.tasks))
        if mine and not todo:
            self.log(f"{self.name}: all {mine} shard(s) of this task done before")
        for j, k in enumerate(todo):
            t0 = time.time()
            rows = make(self.span(k), k)
            write_jsonl(self.path(k), rows)
            dt = time.time() - t0
            self.log(f"{self.name}: shard {k + 1}/{self.shards} ({len(self.span(k))} items -> {len(rows)} rows) in "
                     f"{dt:.1f}s; {len(todo) - j - 1} left for this task")

    def complete(self) -> bool:
        return all(self.done(k) for k in range(self.shards))

    def wait(self, timeout_s: float, poll_s: float = 2.0) -> None:
        """Until every task's shards exist (task 0 before the next stage or the final files)."""
        t0 = time.time()
        while not self.complete():
            if time.time() - t0 > timeout_s:
                missing = [k for k in range(self.shards) if not self.done(k)]
                raise UserError(f"{self.name}: shards {missing[:10]} still missing after {timeout_s:.0f}s "
                                f"(wait_timeout_s): are the other tasks running?")
            time.sleep(poll_s)

    def rows(self) -> list[dict]:
        out = []
        for k in range(self.shards):
            out += read_jsonl(self.path(k))
        return out
