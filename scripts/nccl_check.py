"""Before a long job: do the GPUs of this allocation talk to each other, and how fast? Each rank
all-reduces a buffer a few times; rank 0 prints the bus bandwidth (NCCL's all_reduce convention,
2 (n-1)/n x bytes / time) and checks the sum.

    torchrun --nproc-per-node 8 scripts/nccl_check.py                 # one node
    srun --nodes 2 --ntasks-per-node 8 python scripts/nccl_check.py   # across nodes (MASTER_ADDR/PORT set)
    torchrun --nproc-per-node 2 scripts/nccl_check.py --backend gloo --mib 8   # CPU, gloo
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.distributed as dist


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backend", default="nccl", choices=["nccl", "gloo"])
    p.add_argument("--mib", type=int, default=1024, help="buffer size per rank (MiB of bf16 on GPU, fp32 on CPU)")
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args(argv)
    for slurm, torch_name in (("SLURM_PROCID", "RANK"), ("SLURM_NTASKS", "WORLD_SIZE"), ("SLURM_LOCALID", "LOCAL_RANK")):
        if torch_name not in os.environ and slurm in os.environ:
            os.environ[torch_name] = os.environ[slurm]
    own_group = not dist.is_initialized()
    if own_group:
        dist.init_process_group(args.backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    gpu = args.backend == "nccl"
    if gpu:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dtype = torch.bfloat16 if gpu else torch.float32
    n = args.mib * 2**20 // torch.tensor([], dtype=dtype).element_size()
    x = torch.full((n,), float(rank + 1), dtype=dtype, device="cuda" if gpu else "cpu")
    dist.all_reduce(x)  # warm-up, and the check: every element is 1 + 2 + ... + world
    ok = bool((x == world * (world + 1) / 2).all())
    if gpu:
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.iters):
        dist.all_reduce(x)
    if gpu:
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / args.iters
    busbw = 2 * (world - 1) / world * x.numel() * x.element_size() / seconds / 1e9
    if rank == 0:
        print(f"all_reduce over {world} ranks ({args.backend}): {args.mib} MiB in {seconds * 1e3:.1f} ms, "
              f"bus bandwidth {busbw:.1f} GB/s; sum {'ok' if ok else 'WRONG'}", flush=True)
    if own_group:
        dist.destroy_process_group()
    if not ok:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
