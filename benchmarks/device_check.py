"""Pieces of the one-GPU device check (benchmarks/device_check.sh) that no other benchmark measures.

    python benchmarks/device_check.py env --jsonl R.jsonl      # GPU, driver, versions, commit
    python benchmarks/device_check.py packed --jsonl R.jsonl   # varlen vs per-document attention
    python benchmarks/device_check.py engine --jsonl R.jsonl   # megatron-engine generation tokens/s

`--device cpu --model tiny` runs any of them as a dry run.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time

import torch
from gpu_sft import count_syncs, record, synthetic_rows  # beside this file


def env(args) -> None:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    def version(dist):
        try:
            return dist_version(dist)
        except PackageNotFoundError:  # reported, not fatal: the report says what is missing
            return "not installed"

    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True) if args.device == "cuda" else None
    record(args, "env", {
        "commit": os.environ.get("TULU_COMMIT", "unknown"), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else "none (dry run)",
        "nvidia_smi": smi.stdout.strip() if smi else None, "python": platform.python_version(),
        "torch": torch.__version__, "cuda": torch.version.cuda, "megatron_core": version("megatron-core"),
        "transformers": version("transformers"), "transformer_engine": version("transformer-engine")})


def setup_model(args, overrides=()):
    from tulu_mcore import runtime
    from tulu_mcore.config.compose import compose
    from tulu_mcore.models.factory import build_model

    cfg = compose([f"model={args.model}", f"precision={args.precision}", "model.attention=sdpa",
                   f"runtime.device={args.device}", *overrides])
    rt = runtime.setup(cfg, training=False)
    [model] = build_model(cfg.model.arch, rt.layout, cfg.precision, device=rt.device, attention="sdpa",
                          kernels=cfg.model.kernels)
    return cfg, rt, model


def packed(args) -> None:
    """One packed row through the model twice, varlen flash attention vs the per-document loop: the
    outputs' difference, each path's time, and the host syncs torch reports in a forward+backward."""
    from tulu_mcore import runtime
    from tulu_mcore.models import kernels
    from tulu_mcore.training.step import packed_forward

    cfg, rt, model = setup_model(args)
    [rows] = synthetic_rows(cfg.model.arch.vocab_size, 1, args.batch, args.seq)
    batch = rows[0].as_batch()
    res = {"model": args.model, "seq": args.seq, "documents": int(rows[0].num_seqs)}
    supported = kernels.varlen_supported
    outs = {}
    for name, forced in (("varlen", None), ("per_document", lambda q, d: False)):
        kernels.varlen_supported = forced or supported
        try:
            for _ in range(2):  # warm-up (compilation), then timed
                if rt.device == "cuda":
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                model.zero_grad()
                out, _ = packed_forward(batch, model)
                out.float().sum().backward()
                if rt.device == "cuda":
                    torch.cuda.synchronize()
                res[f"{name}_fwd_bwd_ms"] = 1e3 * (time.perf_counter() - t0)
            outs[name] = out.detach().float()
            if rt.device == "cuda":
                res[f"{name}_host_syncs"] = count_syncs(
                    lambda row: packed_forward(row, model)[0].float().sum().backward(), batch)
        finally:
            kernels.varlen_supported = supported
    res["varlen_used"] = supported(torch.zeros(1, 1, 8, device=rt.device, dtype=torch.bfloat16), 0.0)
    diff = (outs["varlen"] - outs["per_document"]).abs()
    res["max_abs_diff_token_ce"] = diff.max().item()
    res["mean_abs_diff_token_ce"] = diff.mean().item()
    record(args, "packed", res)
    runtime.teardown()


def engine(args) -> None:
    """Generation with the megatron engine (static KV cache) on the trainer's model."""
    import numpy as np

    from tulu_mcore import runtime
    from tulu_mcore.rollout.megatron_engine import MegatronEngine

    cfg, rt, model = setup_model(args)
    eng = MegatronEngine([model], eos_id=-1, max_sequence_length=args.prompt_len + args.new_tokens)
    rng = np.random.default_rng(0)
    prompts = [rng.integers(0, cfg.model.arch.vocab_size, size=args.prompt_len) for _ in range(args.prompts)]
    eng.generate(prompts[:1], n=args.n, max_new_tokens=8)  # warm-up
    if rt.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    outs = eng.generate(prompts, n=args.n, max_new_tokens=args.new_tokens, temperature=1.0)
    if rt.device == "cuda":
        torch.cuda.synchronize()
    secs = time.perf_counter() - t0
    new = sum(len(r.response) for group in outs for r in group)
    t1 = time.perf_counter()
    sent = eng.push_weights()
    record(args, "engine", {"model": args.model, "prompts": args.prompts, "n": args.n, "prompt_len": args.prompt_len,
                            "new_tokens": new, "seconds": secs, "tokens_per_s": new / secs,
                            "push_bytes": sent, "push_s": time.perf_counter() - t1})
    runtime.teardown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["env", "packed", "engine"])
    ap.add_argument("--jsonl", default=None)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="llama3_2_1b")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--n", type=int, default=4)
    ap.add_argument("--prompt-len", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    args = ap.parse_args()
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    {"env": env, "packed": packed, "engine": engine}[args.what](args)


if __name__ == "__main__":
    main()
