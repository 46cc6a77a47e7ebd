"""The device check's report (markdown) from its results.jsonl, with the targets of the GPU section.

    python benchmarks/device_report.py OUT/results.jsonl > OUT/report.md
"""

from __future__ import annotations

import json
import sys

TARGETS = ("non-TE bf16 >= 1.3x transformers tokens/s (1B); >= 45 % MFU on the 8B slice; TE bf16 >= 53 % MFU on "
           "the 8B slice; FP8 >= 1.3x TE bf16")


def fmt(x, spec=".1f"):
    return "-" if x is None else format(x, spec)


def main(path: str) -> None:
    rows = [json.loads(line) for line in open(path) if line.strip()]
    by = lambda what: [r for r in rows if r.get("what") == what]  # noqa: E731
    out = ["# Device check", ""]
    for e in by("env"):
        out += [f"- {k}: {v}" for k, v in e.items() if k != "what"] + [""]
    out += ["## Stages", "", "| stage | exit | seconds |", "|---|---:|---:|"]
    out += [f"| {s['name']} | {s['rc']}{' (time limit)' if s['rc'] in (124, 137) else ''} | {s['seconds']} |"
            for s in by("stage")]
    parity = [r for r in rows if str(r.get("what", "")).startswith("parity ")]
    if parity:
        out += ["", "## Parity vs transformers (tulu-convert verify)", "", "| case | result |", "|---|---|"]
        out += [f"| {r['what'][7:]} | {', '.join(f'{k}={v}' for k, v in r.items() if k not in ('what', 't_s'))} |"
                for r in parity]
    if by("kernel"):
        out += ["", "## Element-wise kernels, forward + backward: eager vs what model.kernels=auto runs", "",
                "| kernel | eager ms | compiled/fused ms | speed-up | max diff (out, grad) |", "|---|---:|---:|---:|---|"]
        out += [f"| {k['kernel']} | {k['eager_ms']:.2f} | {k['fused_ms']:.2f} | {k['speedup']:.2f} | "
                f"{k['max_out_diff']:.1e}, {k['max_grad_diff']:.1e} |" for k in by("kernel")]
    for p in by("packed"):
        out += ["", "## Packed attention: varlen vs per-document loop", "",
                "| | value |", "|---|---:|"] + [f"| {k} | {v} |" for k, v in p.items() if k != "what"]
    sft = by("tulu_mcore") + by("transformers")
    if sft:
        out += ["", "## SFT step (packed rows; TFLOP/s by Megatron's causal formula)", "",
                "| model | layers | seq | variant | tokens/s | TFLOP/s | MFU | peak GiB | vs transformers |",
                "|---|---:|---:|---|---:|---:|---:|---:|---:|"]
        base = {(r["model"], r["layers"], r["seq"]): r["tokens_per_s"] for r in by("transformers")}
        for r in sft:
            key = (r["model"], r["layers"], r["seq"])
            label = r.get("label") or r["what"]
            if r["what"] == "tulu_mcore" and r.get("fp8"):
                label += f" ({r['fp8']}, {r['fp8_recipe']})"
            ratio = r["tokens_per_s"] / base[key] if key in base else None
            mfu = r.get("mfu")
            out.append(f"| {r['model']} | {r['layers']} | {r['seq']} | {label} | {r['tokens_per_s']:,.0f} | "
                       f"{fmt(r['tflops'])} | {fmt(mfu * 100 if mfu is not None else None)}{' %' if mfu is not None else ''} | "
                       f"{fmt(r.get('peak_mem_GiB'))} | {fmt(ratio, '.2f')} |")
        syncs = [r["host_syncs_per_step"] for r in by("tulu_mcore") if "host_syncs_per_step" in r]
        if syncs:
            out += ["", f"Host syncs per SFT step (torch.cuda sync debug mode): {syncs}"]
        bf16 = [r for r in by("tulu_mcore") if r.get("attention") == "te" and not r.get("fp8")]
        for r in by("tulu_mcore"):
            if r.get("fp8") and bf16:
                ref = bf16[0]["losses"]
                rel = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], ref))
                out.append(f"- FP8 {r['fp8_recipe']}: loss curve vs TE bf16, max relative difference {rel:.4f}; "
                           f"speed {r['tokens_per_s'] / bf16[0]['tokens_per_s']:.2f}x TE bf16")
    for d in by("dpo"):
        out += ["", "## DPO step: reference cache vs live reference", "",
                f"cache {d['cache_step_s']:.3f} s/step, live {d['live_step_s']:.3f} s/step (ratio {d['ratio']:.2f}); "
                f"identical losses: {d['identical_losses']}"]
    for g in by("engine"):
        out += ["", "## Megatron engine generation", "",
                f"{g['new_tokens']} new tokens in {g['seconds']:.2f} s: {g['tokens_per_s']:,.0f} tokens/s "
                f"({g['prompts']} prompts x {g['n']} samples, prompts of {g['prompt_len']} tokens); weight push "
                f"in place: {g['push_bytes']} bytes"]
    out += ["", f"Targets: {TARGETS}.", ""]
    print("\n".join(out))


if __name__ == "__main__":
    main(sys.argv[1])
