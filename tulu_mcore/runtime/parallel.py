"""megatron-core parallel state (TP, SP, PP, VPP, CP, DP) and seeding."""

from __future__ import annotations

import random

import numpy as np
import torch

from tulu_mcore.arch import Layout


def init_model_parallel(layout: Layout) -> None:
    from megatron.core import parallel_state as ps

    if ps.model_parallel_is_initialized():  # a run in this process that did not tear down (it failed)
        destroy_model_parallel()
    ps.initialize_model_parallel(
        tensor_model_parallel_size=layout.tp,
        pipeline_model_parallel_size=layout.pp,
        virtual_pipeline_model_parallel_size=layout.vpp if layout.vpp > 1 else None,
        context_parallel_size=layout.cp,
    )


def seed_everything(seed: int) -> None:
    """Same seed on every rank: DP replicas build identical weights, and on CPU (full master weights
    drawn, then sliced) TP shards are slices of one matrix. Megatron's tracker derives the per-TP-rank
    seeds for dropout from it."""
    from megatron.core.tensor_parallel.random import model_parallel_cuda_manual_seed

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    model_parallel_cuda_manual_seed(seed)


def destroy_model_parallel() -> None:
    """megatron's parallel state, and the process groups it made: megatron-core forgets its groups
    without destroying them, and a process that runs again (runtime.teardown keeps the default group
    for that) would keep every earlier run's gloo/NCCL groups and their threads alive."""
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    if dist.is_initialized():
        world = dist.group.WORLD
        for group in list(dist.distributed_c10d._world.pg_map):  # no public list of the groups
            if group is not world:
                dist.destroy_process_group(group)
