"""Each element-wise kernel of the local spec, eager against what `model.kernels=auto` runs on a GPU:
RMSNorm (compiled), RoPE on a packed row (the hook, compiled), SwiGLU (megatron's compiled
`bias_swiglu_impl` vs `silu(a) * b`), cross entropy over the vocabulary (megatron's native fused vs
`vocab_parallel_cross_entropy`); forward + backward, 1B-shaped activations, with the largest difference
of outputs and input gradients.

    python benchmarks/kernel_fusions.py --device cuda --tokens 4096        # a GPU
    python benchmarks/kernel_fusions.py --device cpu --tokens 1024 --vocab 32768   # here (compiles on the CPU)
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch
import torch.nn.functional as F


def timed(fn, inputs, device: str, repeat: int) -> tuple[float, torch.Tensor, list]:
    def once():
        # fresh copies: megatron's cross entropy works on its logits in place
        xs = [x.detach().clone().requires_grad_(x.is_floating_point()) for x in inputs]
        out = fn(*xs)
        out.float().sum().backward()
        return out, [x.grad for x in xs if x.grad is not None]

    out, grads = once()  # warm-up (compilation)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(repeat):
        once()
    if device == "cuda":
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - t0) / repeat, out.detach().float(), [g.float() for g in grads]


def main() -> None:
    import torch.distributed as dist
    from megatron.core.fusions.fused_bias_swiglu import bias_swiglu_impl
    from megatron.core.fusions.fused_cross_entropy import fused_vocab_parallel_cross_entropy
    from megatron.core.tensor_parallel.cross_entropy import vocab_parallel_cross_entropy

    from tulu_mcore.models import kernels
    from tulu_mcore.models.norm import rms_norm
    from tulu_mcore.models.packed_rope import rope_thd

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--ffn", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=128256)
    ap.add_argument("--repeat", type=int, default=10)
    ap.add_argument("--jsonl", default=None)
    args = ap.parse_args()
    if not dist.is_initialized():  # the cross entropy reduces over a (one-rank) tensor-parallel group
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29533")
        dist.init_process_group("gloo", rank=0, world_size=1)
    dev, dt, n = args.device, torch.bfloat16 if args.device == "cuda" else torch.float32, args.tokens
    g = torch.Generator().manual_seed(0)

    def rand(*shape, dtype=dt):
        return torch.randn(*shape, generator=g).to(dev, dtype)

    cu = torch.tensor([0, n // 8, n // 4, n // 2, 3 * n // 4, n], dtype=torch.int32, device=dev)
    freqs = rand(n, 1, 1, 64, dtype=torch.float32)
    labels = torch.randint(0, args.vocab, (n, 1), generator=g).to(dev)
    world = dist.group.WORLD

    def in_mode(mode, fn):  # fn run under model.kernels=mode
        def run(*xs):
            kernels.configure(mode)
            try:
                return fn(*xs)
            finally:
                kernels.configure("auto")
        return run

    def rope(t):
        return rope_thd(t, cu, freqs)

    cases = {
        "rms_norm": ((rand(n, args.hidden), rand(args.hidden)),
                     lambda x, w: rms_norm(x, w, 1e-5),
                     in_mode("compiled", lambda x, w: kernels.pick(rms_norm, x)(x, w, 1e-5))),
        "rope": ((rand(n, 32, 64),), in_mode("eager", rope), in_mode("compiled", rope)),
        "swiglu": ((rand(n, 1, 2 * args.ffn),),
                   lambda y: F.silu(y.chunk(2, -1)[0]) * y.chunk(2, -1)[1], lambda y: bias_swiglu_impl(y, None)),
        # bf16 logits, the only dtype the model uses the fused one with (its gradients are always bf16)
        "cross_entropy": ((rand(n, 1, args.vocab, dtype=torch.bfloat16),),
                          lambda z: vocab_parallel_cross_entropy(z, labels, tp_group=world),
                          lambda z: fused_vocab_parallel_cross_entropy(z, labels, world)),
    }
    for name, (inputs, eager, fused) in cases.items():
        t_eager, out_e, grads_e = timed(eager, inputs, dev, args.repeat)
        t_fused, out_f, grads_f = timed(fused, inputs, dev, args.repeat)
        res = {"what": "kernel", "kernel": name, "device": dev, "tokens": n, "eager_ms": t_eager, "fused_ms": t_fused,
               "speedup": t_eager / t_fused, "max_out_diff": (out_e - out_f).abs().max().item(),
               "max_grad_diff": max((a - b).abs().max().item() for a, b in zip(grads_e, grads_f))}
        line = json.dumps(res)
        print(line, flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(line + "\n")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
