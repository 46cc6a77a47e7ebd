"""Start a rank: distributed init, device, the CPU runtime, megatron parallel state, seeds."""

from __future__ import annotations

import atexit
import gc
import os
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
    if not dist.is_initialized():
        init_process_group(device, env)
        # destroyed at exit, not by teardown(): a second run in this process (a notebook, a test that runs
        # several layouts in one launch) reuses the group, since re-creating one on the same store hangs
        atexit.register(_destroy_process_group)
    from tulu_mcore.runtime.parallel import init_model_parallel, seed_everything

    init_model_parallel(layout)
    seed_everything(cfg.runtime.seed)
    return Runtime(device=device, env=env, layout=layout)


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
