"""SFT step throughput: tulu_mcore (megatron-core, local spec, packed THD rows) vs transformers + torch
AdamW on the same rows, same device.

Each step trains on `--batch` synthetic conversations (long-tailed lengths, median 500 tokens, at most
4096; the second half of each is "assistant" and trained) packed best-fit into rows of at most
`--seq` tokens with per-document attention. tulu_mcore: bf16 weights with fp32 main weights and
AdamW states (distributed optimizer), the SFT step of `tulu-train recipe=sft`. transformers: fp32
weights under bf16 autocast (its usual mixed precision), SDPA attention with the same block-diagonal
masks and per-document positions, fused torch AdamW; the same sum loss.

Variants of our step, to measure each change on its own: `--attention te` (Transformer Engine spec)
with `--fp8 hybrid --fp8-recipe delayed|tensorwise`; `--kernels eager` (no compiled norm/RoPE/SwiGLU/
cross entropy), `--optim-impl foreach` (torch's default AdamW on CUDA), `--per-document` (the CPU's
attention loop, which reads document boundaries on the host, instead of varlen flash attention).
`--layers N` keeps the first N decoder layers (an 8B slice); `--sync-debug` counts host syncs in one
extra step (torch.cuda.set_sync_debug_mode); every step's loss is recorded (FP8 vs bf16 curves).

    python benchmarks/gpu_sft.py --model llama3_2_1b --steps 50 --jsonl out.jsonl   # on a GPU
    python benchmarks/gpu_sft.py --model llama3_1_8b --layers 4 --seq 8192 --batch 32 --steps 10
    python benchmarks/gpu_sft.py --model tiny --device cpu --steps 3 --seq 256       # a dry run
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def synthetic_rows(vocab: int, steps: int, batch: int, seq: int, seed: int = 0):
    from tulu_mcore.data.packing import pack

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(steps):
        lengths = np.clip(rng.lognormal(np.log(500), 1.0, size=batch), 32, seq).astype(int)
        examples = []
        for n in lengths:
            trained = np.zeros(n, dtype=bool)
            trained[n // 2:] = True
            examples.append((rng.integers(0, vocab, size=n), trained))
        out.append(pack(examples, seq, multiple=1, pad_id=0))
    return out


def record(args, what: str, data: dict) -> None:
    line = json.dumps({"what": what, **data})
    print(line, flush=True)
    if args.jsonl:
        with open(args.jsonl, "a") as f:
            f.write(line + "\n")


def timed(fn, steps_data, warmup: int, device: str):
    times = []
    for i, rows in enumerate(steps_data):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn(rows)
        if device == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return times


def summarize(arch, steps_data, times, warmup: int, device: str) -> dict:
    from tulu_mcore.metrics.flops import peak_flops, training_flops

    used = steps_data[warmup:]
    tokens = sum(r.real_tokens for rows in used for r in rows)
    flops = sum(training_flops(arch, [n for r in rows for n in r.seq_lens]) for rows in used)
    total = sum(times)
    peak = peak_flops(torch.cuda.get_device_name()) if device == "cuda" else None
    return {"steps": len(times), "median_step_ms": 1e3 * sorted(times)[len(times) // 2],
            "tokens_per_s": tokens / total, "tflops": flops / total / 1e12,
            "mfu": flops / total / peak if peak else None,
            "rows_per_step": sum(len(r) for r in used) / len(used),
            "peak_mem_GiB": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None}


def overrides(args) -> list[str]:
    out = [f"model={args.model}", f"precision={args.precision}", f"model.attention={args.attention}",
           f"model.kernels={args.kernels}", f"optim.impl={args.optim_impl}", f"runtime.device={args.device}",
           f"train.seq_length={args.seq}", "train.global_batch_size=1", "optim.lr=1e-5", "recipe=sft"]
    if args.layers:
        out.append(f"model.arch.num_hidden_layers={args.layers}")
    if args.fp8:
        out += [f"precision.fp8={args.fp8}", f"precision.fp8_recipe={args.fp8_recipe}"]
    return out


def count_syncs(step, rows) -> int:
    """Host syncs torch reports (set_sync_debug_mode) during one step."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode(1)
        try:
            step(rows)
            torch.cuda.synchronize()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def run_tulu(args, steps_data):
    from tulu_mcore import runtime
    from tulu_mcore.config.compose import compose
    from tulu_mcore.models import kernels
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.training.setup import build_optimizer, wrap_for_training
    from tulu_mcore.training.step import packed_forward_step, train_step

    cfg = compose(overrides(args))
    rt = runtime.setup(cfg)
    if args.per_document:
        kernels.varlen_supported = lambda q, dropout: False
    chunks = build_model(cfg.model.arch, rt.layout, cfg.precision, device=rt.device, attention=cfg.model.attention,
                         kernels=cfg.model.kernels, config_overrides={"calculate_per_token_loss": True})
    model = wrap_for_training(chunks, cfg.precision, cfg.optim)
    opt = build_optimizer(model, cfg.precision, cfg.optim)
    losses, held = [], {"model": model, "opt": opt}  # dropped before the transformers baseline

    def step(rows):
        result = train_step(held["model"], held["opt"], [row.as_batch() for row in rows], seq_length=args.seq,
                            micro_batch_size=1, forward_step=packed_forward_step, reduction="sum")
        losses.append(result.loss)

    times = timed(step, steps_data, args.warmup, rt.device)
    out = summarize(cfg.model.arch, steps_data, times, args.warmup, rt.device)
    out["losses"] = losses
    if args.sync_debug and rt.device == "cuda":
        out["host_syncs_per_step"] = count_syncs(step, steps_data[-1])
    held.clear()
    del model, opt, chunks
    runtime.teardown()
    return cfg.model.arch, out


def run_transformers(args, arch, steps_data):
    from transformers import LlamaConfig, LlamaForCausalLM

    device = args.device
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = LlamaForCausalLM(LlamaConfig.from_dict(arch.to_hf_config(torch.float32))).to(device)
    model.config._attn_implementation = "sdpa"
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")

    def step(rows):
        opt.zero_grad(set_to_none=True)
        seqs = sum(r.num_seqs for r in rows)
        for r in rows:
            t = r.tokens.shape[1]
            cu = r.cu_seqlens_padded.to(device).long()
            idx = torch.arange(t, device=device)
            doc = torch.searchsorted(cu, idx, right=True)
            pos = idx - cu[doc - 1]
            mask = ((idx[:, None] >= idx[None, :]) & (doc[:, None] == doc[None, :]))[None, None]
            with torch.autocast(device_type=device, dtype=torch.bfloat16):
                logits = model(input_ids=r.tokens.to(device), attention_mask=mask,
                               position_ids=pos[None]).logits
            ce = torch.nn.functional.cross_entropy(logits[0].float(), r.labels[0].to(device), reduction="none")
            ((ce * r.loss_mask[0].to(device)).sum() / seqs).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    times = timed(step, steps_data, args.warmup, device)
    return summarize(arch, steps_data, times, args.warmup, device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama3_2_1b")
    ap.add_argument("--precision", default="bf16")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=16, help="conversations per step")
    ap.add_argument("--seq", type=int, default=4096)
    ap.add_argument("--jsonl", default=None)
    ap.add_argument("--skip-transformers", action="store_true")
    ap.add_argument("--only-transformers", action="store_true")
    ap.add_argument("--layers", type=int, default=None, help="keep this many decoder layers (a slice)")
    ap.add_argument("--attention", default="sdpa", help="sdpa | flex | te")
    ap.add_argument("--fp8", default=None, help="e4m3 | hybrid (Transformer Engine)")
    ap.add_argument("--fp8-recipe", default="delayed")
    ap.add_argument("--kernels", default="auto", help="model.kernels: auto | compiled | eager")
    ap.add_argument("--optim-impl", default="auto", help="optim.impl: auto | fused | foreach | for_loop")
    ap.add_argument("--per-document", action="store_true", help="attention loop over documents (host syncs)")
    ap.add_argument("--sync-debug", action="store_true")
    ap.add_argument("--label", default=None, help="names this variant in the output")
    args = ap.parse_args()
    from tulu_mcore.config.compose import compose
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    arch = compose(overrides(args)).model.arch
    steps_data = synthetic_rows(arch.vocab_size, args.steps + args.warmup, args.batch, args.seq)
    shape = {"model": args.model, "layers": arch.num_hidden_layers, "seq": args.seq, "batch": args.batch,
             "device": args.device}
    if not args.only_transformers:
        variant = {k: getattr(args, k) for k in ("attention", "fp8", "fp8_recipe", "kernels", "optim_impl",
                                                 "per_document", "precision")}
        arch, tulu = run_tulu(args, steps_data)
        record(args, "tulu_mcore", {"label": args.label, **shape, **variant, **tulu})
    if not args.skip_transformers:
        record(args, "transformers", {"label": "transformers", **shape, **run_transformers(args, arch, steps_data)})


if __name__ == "__main__":
    main()
