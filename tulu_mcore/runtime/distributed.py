"""Process-group start-up from torchrun or Slurm environment variables, and the device choice."""

from __future__ import annotations

import datetime
import os
import re
import socket
from dataclasses import dataclass

import torch

from tulu_mcore.errors import UserError


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    master_addr: str
    master_port: int
    source: str  # "torchrun" | "slurm" | "single"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm hostlist such as ``gpu[01-03,07],login1`` (no scontrol needed in containers)."""
    hosts: list[str] = []
    for m in re.finditer(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist):
        prefix, ranges = m.group(1), m.group(2)
        if not ranges:
            hosts.append(prefix)
            continue
        for part in ranges.split(","):
            if "-" in part:
                lo, hi = part.split("-")
                hosts += [f"{prefix}{i:0{len(lo)}d}" for i in range(int(lo), int(hi) + 1)]
            else:
                hosts.append(f"{prefix}{part}")
    return hosts


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    """torchrun's variables first (also under srun + torchrun), then srun's one-task-per-GPU ones."""
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
            master_port=int(env.get("MASTER_PORT", 29500)),
            source="torchrun",
        )
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        nodes = expand_nodelist(env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST", ""))
        job = int(env.get("SLURM_JOB_ID", "0"))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=int(env["SLURM_NTASKS"]),
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            master_addr=env.get("MASTER_ADDR") or (nodes[0] if nodes else "127.0.0.1"),
            # every task derives the same port from the job id unless MASTER_PORT is set
            master_port=int(env.get("MASTER_PORT") or 20000 + job % 20000),
            source="slurm",
        )
    return DistEnv(0, 1, 0, "127.0.0.1", free_port(), "single")


def resolve_device(requested: str) -> str:
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("runtime.device=cuda but no CUDA device is visible: set runtime.device=cpu")
    if requested not in ("cuda", "cpu"):
        raise UserError(f"runtime.device={requested!r}: choose auto, cuda or cpu")
    return requested


def init_process_group(device: str, env: DistEnv | None = None, timeout_s: int = 1800) -> DistEnv:
    """Start torch.distributed (nccl on CUDA, gloo on CPU) unless it is already running."""
    import torch.distributed as dist

    env = env or detect_env()
    if dist.is_initialized():
        return env
    if device == "cuda":
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    dist.init_process_group(
        backend="nccl" if device == "cuda" else "gloo",
        init_method=f"tcp://{env.master_addr}:{env.master_port}",
        rank=env.rank,
        world_size=env.world_size,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    host_group()
    return env


_host_group: list = []


def host_group():
    """A process group over every rank for values that live on the host (stop flags, step counts):
    gloo, so reducing them never waits for the GPU's work queue (an NCCL reduction of a CUDA tensor,
    read back, would be a device sync). None (the default group) when that is gloo already. Made with
    the default group (:func:`init_process_group`), since every rank must create it together."""
    import torch.distributed as dist

    if dist.get_backend() == "gloo":
        return None
    if not _host_group:
        _host_group.append(dist.new_group(backend="gloo"))
    return _host_group[0]
