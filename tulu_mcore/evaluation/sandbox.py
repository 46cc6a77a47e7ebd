"""Running generated code against a benchmark's tests: one fresh Python process per program, isolated
mode (no site or user paths from the environment), an empty temporary working directory, limits on CPU
time, memory, file size and processes, killed at the timeout. This bounds accidents of generated code;
it is not a security boundary against a hostile model: run untrusted models' code in a container."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile

TIMEOUT_S = 10.0
MEMORY_BYTES = 2 << 30


def _limits(timeout_s: float) -> None:
    os.setsid()
    cpu = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_BYTES, MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_FSIZE, (16 << 20, 16 << 20))


def passes(program: str, timeout_s: float = TIMEOUT_S) -> bool:
    """Whether `program` runs to completion with exit status 0 within `timeout_s`."""
    with tempfile.TemporaryDirectory(prefix="tulu-eval-exec-") as cwd:
        # from a file: generated text may hold what an argument cannot (a NUL byte); Python refuses such
        # a program itself, as it would any other that does not compile
        script = os.path.join(cwd, "program.py")
        with open(script, "wb") as f:
            f.write(program.encode("utf-8", errors="replace"))
        proc = subprocess.Popen([sys.executable, "-I", script], cwd=cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=lambda: _limits(timeout_s), env={"PATH": "/usr/bin:/bin"})
        try:
            return proc.wait(timeout=timeout_s) == 0
        except subprocess.TimeoutExpired:
            return False
        finally:  # the program's own children too (it leads its own process group)
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
