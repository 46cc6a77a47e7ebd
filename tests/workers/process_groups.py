"""Worker: how many torch.distributed process groups this process holds (rank 0 writes it). Run in a
test pool after training runs: runtime.teardown must have released each run's megatron groups, leaving
the default group only.

    torchrun --nproc-per-node N tests/workers/process_groups.py OUT.json
"""

import json
import os
import sys

import torch.distributed as dist

if __name__ == "__main__":
    groups = len(dist.distributed_c10d._world.pg_map) if dist.is_initialized() else 0
    if not dist.is_initialized() or dist.get_rank() == 0:
        with open(sys.argv[1], "w") as f:
            json.dump({"groups": groups, "threads": len(os.listdir("/proc/self/task"))}, f)  # native ones too
