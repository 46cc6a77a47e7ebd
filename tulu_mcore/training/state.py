"""What a training run needs besides weights to continue exactly: RNG streams, stop requests."""

from __future__ import annotations

import random
import signal

import numpy as np
import torch
import torch.distributed as dist

from tulu_mcore.runtime.distributed import host_group


def rng_state() -> dict:
    """Every random stream of this rank (Python, NumPy, torch CPU/CUDA, megatron's tracker)."""
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "tracker": get_cuda_rng_tracker().get_states(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    from megatron.core.tensor_parallel.random import get_cuda_rng_tracker

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    get_cuda_rng_tracker().set_states(state["tracker"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


class StopRequest:
    """SIGTERM / SIGUSR1 (Slurm's warning before preemption or the time limit) ask the run to stop after
    the current step, with a checkpoint. Every rank asks every other at the same point of each step, so
    a signal that reached only some ranks still stops all of them together."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        for s in self.SIGNALS:
            signal.signal(s, self._handle)

    def _handle(self, signum, frame) -> None:
        self.received = signum

    def requested(self, also: bool = False) -> bool:
        """Whether any rank received a stop signal (or has its own reason: `also`). Reduced on the host
        (gloo): asking costs no device sync."""
        flag = torch.tensor([1 if self.received is not None or also else 0])
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=host_group())
        return bool(flag.item())

    def name(self) -> str:
        return signal.Signals(self.received).name if self.received is not None else "a signal on another rank"
