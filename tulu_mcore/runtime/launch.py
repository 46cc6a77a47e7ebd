"""Start ranks on this machine with torchrun (used by commands that launch themselves, and tests)."""

from __future__ import annotations

import os
import subprocess
import sys

from tulu_mcore.runtime.distributed import free_port

# Variables of an enclosing launch that would confuse a nested one.
_LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "GROUP_RANK", "MASTER_ADDR",
                "MASTER_PORT", "TORCHELASTIC_RUN_ID", "SLURM_PROCID", "SLURM_NTASKS")


def torchrun_cmd(target: str, args: list[str], nproc: int) -> list[str]:
    entry = [target] if target.endswith(".py") else ["-m", target]
    return [
        sys.executable, "-m", "torch.distributed.run",
        "--nnodes", "1", "--nproc-per-node", str(nproc),
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        *entry, *args,
    ]


def torchrun(target: str, args: list[str], nproc: int, *, capture: bool = False, env: dict | None = None,
             timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run a module (`pkg.mod`) or a script (`path.py`) with `args` on `nproc` local ranks."""
    run_env = {k: v for k, v in os.environ.items() if k not in _LAUNCH_VARS}
    run_env.setdefault("OMP_NUM_THREADS", "1")  # also keeps torchrun from warning about it
    run_env.update(env or {})
    return subprocess.run(
        torchrun_cmd(target, args, nproc), capture_output=capture, text=True, env=run_env, timeout=timeout,
    )


def user_errors(stderr: str) -> list[str]:
    """The 'error: ...' lines ranks printed (UserError), each once: torchrun itself only says 1."""
    seen: list[str] = []
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith("error: ") and line not in seen:
            seen.append(line)
    return seen
