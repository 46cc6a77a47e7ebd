"""RoPE on a packed row: the project's hook (per-token positions on the device, one gather; eager, and
compiled as model.kernels=auto does on GPUs) against megatron-core's unfused THD RoPE (the row split per
document on the host), same inputs, on this machine.

    python benchmarks/packed_rope.py --tokens 4096 --docs 16 --heads 32 --dim 64 --repeat 20
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch


def main() -> None:
    from megatron.core.models.common.embeddings import rope_utils

    from tulu_mcore.models import kernels
    from tulu_mcore.models.packed_rope import rope_thd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--docs", type=int, default=16)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--repeat", type=int, default=20)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    cuts = torch.randperm(args.tokens - 1, generator=g)[: args.docs - 1].sort().values + 1
    cu = torch.cat([torch.tensor([0]), cuts, torch.tensor([args.tokens])]).int().to(args.device)
    t = torch.randn(args.tokens, args.heads, args.dim, generator=g).to(args.device)
    longest = int((cu[1:] - cu[:-1]).max())
    # the model's table: as long as the longest document (megatron reads a table as long as the whole
    # row as positions in the row, which only a one-document row gives)
    freqs = torch.randn(longest, 1, 1, args.dim, generator=g).to(args.device)
    group = SimpleNamespace(size=lambda: 1, rank=lambda: 0)  # what megatron asks of a CP group
    def hook(mode):
        def run():
            kernels.configure(mode)
            try:
                return rope_thd(t, cu, freqs)
            finally:
                kernels.configure("auto")
        return run

    compiled = hook("compiled")

    fns = {"megatron_unfused": lambda: rope_utils._apply_rotary_pos_emb_thd(t, cu, freqs, cp_group=group),
           "hook_eager": hook("eager"), "hook_compiled": compiled}
    res = {"args": vars(args), "identical_eager": torch.equal(hook("eager")(), fns["megatron_unfused"]()),
           "compiled_max_diff": (compiled() - fns["megatron_unfused"]()).abs().max().item()}
    for name, fn in fns.items():
        fn()
        t0 = time.perf_counter()
        for _ in range(args.repeat):
            fn()
        if args.device == "cuda":
            torch.cuda.synchronize()
        res[f"{name}_ms"] = 1e3 * (time.perf_counter() - t0) / args.repeat
    print(json.dumps(res))


if __name__ == "__main__":
    main()
