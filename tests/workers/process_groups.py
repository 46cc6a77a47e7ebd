"""Worker: several tulu-train runs one after another in this process (as a notebook, or tulu-demo's
launch, runs them), recording after each how many torch.distributed process groups and threads the
process holds; rank 0 writes the list. runtime.teardown must release each run's megatron groups, keeping
the default group for the next run.

    torchrun --nproc-per-node N tests/workers/process_groups.py OUT.json RUN_ROOT LAYOUT... -- OVERRIDES...
"""

import json
import os
import sys

import torch.distributed as dist


def main(out: str, root: str, layouts: list[str], overrides: list[str]) -> None:
    from tulu_mcore.cli.train import main as train

    after = []
    for i, layout in enumerate(layouts):
        train([*overrides, f"parallel={layout}", f"run.dir={root}/run{i}"])
        after.append({"layout": layout, "groups": len(dist.distributed_c10d._world.pg_map),
                      "threads": len(os.listdir("/proc/self/task"))})  # native threads too (gloo's)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(after, f)


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    sep = sys.argv.index("--")
    main(sys.argv[1], sys.argv[2], sys.argv[3:sep], sys.argv[sep + 1:])
