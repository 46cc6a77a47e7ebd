"""Ranks that stay up for the test session, so that a multi-rank test pays for its own work and not for
a fresh launch (python + torch + megatron-core + transformers imports, ~20 s of CPU per rank on a small
machine, against 1-5 s for a tiny training run).

A pool is one ``torchrun --nproc-per-node N tests/workers/pool.py QUEUE`` launch; :func:`run` hands it a
job (a module or a script with its arguments, exactly what ``torchrun`` would be given) and returns what a
fresh launch would: a ``CompletedProcess`` with rank 0's stdout, every rank's stderr and the exit code.
Every job runs the same code as a fresh process (``runpy`` as ``__main__``); what stays from one job to the
next is the imported modules, the CPU runtime and the process group (``runtime.teardown`` keeps it for a
next run in the process). A job that hangs (its timeout), destroys the process group or fails on more
than one rank (whose ranks may then disagree about where they are) ends its pool; the next job starts a
new one. ``TULU_TEST_FRESH_LAUNCHES=1`` sends every job to a fresh torchrun
instead (to check that the pool changes nothing).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT_S = 300


class RankPool:
    def __init__(self, nproc: int):
        self.nproc = nproc
        self.proc: subprocess.Popen | None = None
        self.queue: Path | None = None
        self.next = 0
        self.starts = 0

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        from tulu_mcore.runtime.launch import _LAUNCH_VARS, torchrun_cmd

        self.queue = Path(tempfile.mkdtemp(prefix=f"tulu-pool{self.nproc}-"))
        env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
        env.setdefault("OMP_NUM_THREADS", "1")
        log = open(self.queue / "pool.log", "w")
        self.proc = subprocess.Popen(torchrun_cmd(str(ROOT / "tests" / "workers" / "pool.py"),
                                                  [str(self.queue), str(os.getpid())], self.nproc), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.next, self.starts = 0, self.starts + 1
        deadline = time.time() + START_TIMEOUT_S
        while not all((self.queue / f"ready.rank{r}").is_file() for r in range(self.nproc)):
            if self.proc.poll() is not None or time.time() > deadline:
                text = (self.queue / "pool.log").read_text()[-6000:]
                self.stop()
                raise AssertionError(f"the {self.nproc}-rank test pool did not start:\n{text}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            if self.proc.poll() is None:
                (self.queue / "stop").touch()
                try:
                    self.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            if self.proc.poll() is None:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        if self.queue is not None:
            shutil.rmtree(self.queue, ignore_errors=True)
        self.proc, self.queue = None, None

    def run(self, target: str, args: list[str], *, env: dict | None = None,
            timeout: float = 600) -> subprocess.CompletedProcess:
        if not self.alive():
            self.stop()
            self.start()
        n, queue = self.next, self.queue
        self.next += 1
        stem = f"job-{n:05d}"
        tmp = queue / f"{stem}.tmp"
        tmp.write_text(json.dumps({"target": target, "args": [str(a) for a in args], "env": env or {}}))
        tmp.rename(queue / f"{stem}.json")
        done = [queue / f"{stem}.rank{r}.done" for r in range(self.nproc)]
        deadline, first_done = time.time() + timeout, None
        while not all(d.is_file() for d in done):
            finished = [d for d in done if d.is_file()]
            if finished and first_done is None:
                first_done = time.time()
            failed = any(json.loads(d.read_text())["code"] != 0 for d in finished)
            # a rank that failed leaves the others waiting in a collective: give them a moment, then stop
            if not self.alive() or time.time() > deadline or (failed and time.time() - first_done > 30):
                return self._abandon(stem, target, args, "hung" if self.alive() else "died")
            time.sleep(0.02)
        results = [json.loads(d.read_text()) for d in done]
        code = next((r["code"] for r in results if r["code"] != 0), 0)
        out = (queue / f"{stem}.rank0.out").read_text()
        err = "".join((queue / f"{stem}.rank{r}.err").read_text() for r in range(self.nproc))
        if any(r["pool_ends"] for r in results):
            self.proc.wait(timeout=60)
            self.stop()
        return subprocess.CompletedProcess([target, *args], code, out, err)

    def _abandon(self, stem: str, target: str, args: list[str], what: str) -> subprocess.CompletedProcess:
        queue = self.queue
        out = _read(queue / f"{stem}.rank0.out")
        err = "".join(_read(queue / f"{stem}.rank{r}.err") for r in range(self.nproc))
        err += f"\n[test pool: the {self.nproc}-rank pool {what} running this job]\n" + _read(queue / "pool.log")[-4000:]
        self.stop()
        return subprocess.CompletedProcess([target, *args], 124 if what == "hung" else 1, out, err)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.is_file() else ""


_POOLS: dict[int, RankPool] = {}


def run(target: str, args: list[str], nproc: int, *, env: dict | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """`target` (a module or a script) with `args` on `nproc` ranks of the session's pool (or a fresh
    torchrun when TULU_TEST_FRESH_LAUNCHES=1)."""
    if os.environ.get("TULU_TEST_FRESH_LAUNCHES") == "1":
        from tulu_mcore.runtime.launch import torchrun

        return torchrun(target, [str(a) for a in args], nproc=nproc, capture=True, env=env, timeout=timeout)
    pool = _POOLS.setdefault(nproc, RankPool(nproc))
    return pool.run(target, args, env=env, timeout=timeout)


def starts() -> dict[int, int]:
    """How many times each pool was started (1 per size when nothing failed)."""
    return {n: p.starts for n, p in _POOLS.items()}


@atexit.register
def stop_all() -> None:
    for pool in _POOLS.values():
        pool.stop()
