"""GPU checks of the foundation on one CUDA device:

1. parity: `tulu-convert verify --device cuda` in fp32 and bf16 for the tiny model and a random
   Llama-3.2-1B-shaped model (megatron local spec vs transformers eager attention, both on the GPU);
2. speed: forward+backward (and a full AdamW step) of the 1B model with the local spec (SDPA core
   attention), bf16, one sequence of 4096 tokens per step; tokens/s, TFLOP/s (Megatron's causal formula)
   and MFU against the device's dense bf16 peak.

    python benchmarks/gpu_foundation.py --workdir /tmp/gpu-bench --json results.json
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

CLI = [sys.executable, "-m", "tulu_mcore.cli.convert"]


def sh(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (0, 1):  # 1 = verify ran but out of tolerance: still a result
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-4000:]}")
    return proc.stdout


def verify(hf: Path, ckpt: Path, dtype: str, seq: int, device: str = "cuda") -> dict:
    out = sh(CLI + ["verify", str(hf), str(ckpt), "--device", device, "--dtype", dtype, "--seq-len", str(seq)])
    return dict(re.findall(r"^(\w+)=(.*)$", out, flags=re.M))


def parity(work: Path, record, device: str = "cuda") -> dict:
    import torch

    from tulu_mcore.config.compose import model_preset
    from tulu_mcore.models.llama.tiny import make_hf_llama

    res = {}
    models = (("1b", "llama3_2_1b", torch.bfloat16, 0.02), ("tiny", "tiny", torch.float32, 0.1))
    for name, preset, dtype, std in models if device == "cuda" else models[1:]:
        hf, ckpt = work / f"{name}-hf", work / f"{name}-mcore"
        make_hf_llama(hf, model_preset(preset).arch, dtype=dtype, init_std=std, max_shard_size="1GB")
        sh(CLI + ["hf-to-mcore", str(hf), str(ckpt), "--overwrite"])
        record(f"converted {name}", {})
        for compute in ("bf16", "fp32"):
            r = verify(hf, ckpt, compute, 256, device)
            res[f"{name}_{compute}"] = r
            record(f"parity {name} {compute}", r)
    return res


def timing(seq: int, iters: int, warmup: int) -> dict:
    """Runs in a fresh process (python benchmarks/gpu_foundation.py --timing)."""
    import torch
    from megatron.core.pipeline_parallel import get_forward_backward_func

    from tulu_mcore import runtime
    from tulu_mcore.config.compose import compose
    from tulu_mcore.metrics.flops import peak_flops, training_flops
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.training.setup import build_optimizer, wrap_for_training
    from tulu_mcore.training.step import lm_forward_step, train_step

    cfg = compose(["model=llama3_2_1b", "precision=bf16", "model.attention=sdpa", "runtime.device=cuda",
                   f"train.seq_length={seq}", "train.global_batch_size=1", "optim.lr=1e-5"])
    rt = runtime.setup(cfg)
    arch = cfg.model.arch
    chunks = build_model(arch, rt.layout, cfg.precision, device="cuda", attention="sdpa",
                         config_overrides={"calculate_per_token_loss": True})
    model = wrap_for_training(chunks, cfg.precision, cfg.optim)
    opt = build_optimizer(model, cfg.precision, cfg.optim)
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, arch.vocab_size, (1, seq + 1), generator=g)
    mb = [{"tokens": tokens[:, :-1], "labels": tokens[:, 1:], "loss_mask": torch.ones(1, seq)}]

    def fwd_bwd():
        for c in model:
            c.zero_grad_buffer()
        get_forward_backward_func()(forward_step_func=lm_forward_step, data_iterator=iter(mb), model=model[0],
                                    num_microbatches=1, seq_length=seq, micro_batch_size=1, forward_only=False)

    def full_step():
        train_step(model, opt, mb, seq_length=seq, micro_batch_size=1)

    out = {"device": torch.cuda.get_device_name(), "seq": seq, "params": arch.num_params}
    flops = training_flops(arch, [seq])
    peak = peak_flops(out["device"], "bf16")
    for name, fn in (("fwd_bwd", fwd_bwd), ("step", full_step)):
        for _ in range(warmup):
            fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        times.sort()
        med = times[len(times) // 2]
        out[name] = {"median_ms": med * 1e3, "min_ms": times[0] * 1e3, "tokens_per_s": seq / med,
                     "tflops": flops / med / 1e12, "mfu": flops / med / peak if peak else None}
        print(f"{name}: {out[name]}", flush=True)
    out["peak_mem_GiB"] = torch.cuda.max_memory_allocated() / 2**30
    out["sdpa_backend"] = sdpa_backend()
    runtime.teardown()
    return out


def sdpa_backend() -> str:
    """Which fused SDPA kernel accepts causal GQA in bf16 here (the local spec's fast path)."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 32, 128, 64, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, 8, 128, 64, device="cuda", dtype=torch.bfloat16)
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, k, k, is_causal=True, enable_gqa=True)
            return backend.name
        except RuntimeError:
            continue
    return "MATH"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workdir", default="/tmp/gpu-bench")
    ap.add_argument("--json", default=None)
    ap.add_argument("--jsonl", default=None, help="append each result here as soon as it is measured")
    ap.add_argument("--timing", action="store_true", help="(internal) run only the timing, print JSON")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--parity-only", action="store_true", help="skip the timing")
    ap.add_argument("--device", default="cuda", help="cpu: a dry run of the parity checks")
    args = ap.parse_args()
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    if args.timing:
        print("TIMING " + json.dumps(timing(args.seq, args.iters, args.warmup)), flush=True)
        return
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    start = time.time()

    def record(what: str, data: dict) -> None:
        line = json.dumps({"t_s": round(time.time() - start, 1), "what": what, **data})
        print(line, flush=True)
        if args.jsonl:
            with open(args.jsonl, "a") as f:
                f.write(line + "\n")

    res = {}
    if not args.parity_only:
        out = sh([sys.executable, __file__, "--timing", "--seq", str(args.seq), "--iters", str(args.iters),
                  "--warmup", str(args.warmup)])
        res["timing"] = json.loads(out.split("TIMING ", 1)[1])
        record("timing", res["timing"])
    res["parity"] = parity(work, record, args.device)
    print(json.dumps(res, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
