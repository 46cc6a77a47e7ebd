"""Start a rank: distributed init, device, the CPU runtime, megatron parallel state, seeds."""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
import time
from dataclasses import dataclass

import torch.distributed as dist

from tulu_mcore.arch import Layout
from tulu_mcore.config.schema import RunConfig
from tulu_mcore.config.validate import validate
from tulu_mcore.runtime.distributed import DistEnv, detect_env, init_process_group, resolve_device


@dataclass(frozen=True)
class Runtime:
    device: str
    env: DistEnv
    layout: Layout

    @property
    def rank(self) -> int:
        return self.env.rank

    @property
    def is_main(self) -> bool:
        return self.env.rank == 0


def setup(cfg: RunConfig, *, training: bool = True) -> Runtime:
    """Everything a rank does before building a model. Validates `cfg` for this world size first,
    so an impossible layout fails before any process group or model exists. `training=False`
    (conversion, verification) skips the checks of the `train` section."""
    # megatron's TP overlap wants one CUDA work queue (set before any CUDA context exists)
    os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")
    device = resolve_device(cfg.runtime.device)
    env = detect_env()
    layout = validate(cfg, env.world_size, device=device, training=training)
    if device == "cpu":
        from tulu_mcore.runtime import cpu

        cpu.install()
    watch_launcher()
    if not dist.is_initialized():
        init_process_group(device, env)
        # destroyed at exit, not by teardown(): a second run in this process (a notebook, a test that runs
        # several layouts in one launch) reuses the group, since re-creating one on the same store hangs
        atexit.register(_destroy_process_group)
    from tulu_mcore.runtime.parallel import init_model_parallel, seed_everything

    init_model_parallel(layout)
    seed_everything(cfg.runtime.seed)
    return Runtime(device=device, env=env, layout=layout)


_watching: list[int] = []


def watch_launcher(poll_s: float = 1.0) -> None:
    """A rank started by torchrun exits when torchrun is gone (killed, its node's session ended): an
    orphaned rank would otherwise go on writing the run's checkpoints and metrics beside a restarted run.
    Watched by polling the parent's pid (a rank is re-parented when its launcher dies)."""
    if _watching or "TORCHELASTIC_RUN_ID" not in os.environ:
        return
    parent = os.getppid()
    _watching.append(parent)

    def watch():
        while True:
            time.sleep(poll_s)
            if os.getppid() != parent:
                print(f"[rank {os.environ.get('RANK', '?')}] its launcher (torchrun, pid {parent}) exited: "
                      "stopping this rank", file=sys.stderr, flush=True)
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="launcher-watch").start()


def teardown() -> None:
    """The end of a run: every rank waits for the others, then megatron's parallel state and its process
    groups go; the default process group stays for a next run in this process (setup() reuses it) and is
    destroyed at exit."""
    from tulu_mcore.runtime.parallel import destroy_model_parallel

    if dist.is_initialized():
        dist.barrier()  # first: no rank may still be talking on a group the others destroy
    destroy_model_parallel()
    # the run's model and optimizer sit in reference cycles that hold groups (and their threads) alive
    gc.collect()


def _destroy_process_group() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
