"""Weight push from a trainer to each rollout engine: seconds and bytes per second.

Builds the policy at the given layout (random weights; no optimizer), starts the engine, and times
`--pushes` pushes after the first (start-up) one. Engines: `vllm:TRANSPORT` over the collective groups
(`collective`), the socket (`memory`) or safetensors files (`disk`), each verified on every push
(checksums where the transport has them, and the probe) or, with a `:noverify` suffix, never; and
`megatron` (in place: only the version moves); `export` is the trainer's side alone (TP gather and
serialisation, nothing sent). The vLLM engine runs in its own environment: TULU_VLLM_PYTHON
(scripts/vllm-env.sh builds the CPU one).

    torchrun --nproc-per-node 2 benchmarks/weight_push.py --tp 2 --width 1024 --layers 8 --out push.json \
        --engines vllm:collective,vllm:collective:noverify,vllm:memory:noverify,vllm:disk:noverify
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


class ExportOnly:
    def push_weights(self, chunks, arch) -> int:
        from tulu_mcore.convert.export import export_hf_weights
        from tulu_mcore.rollout.vllm_engine import _tensor_bytes

        return sum(len(_tensor_bytes(t)) for bucket in export_hf_weights(chunks, arch) for _, t in bucket)

    def close(self) -> None:
        pass


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tp", type=int, default=2)
    p.add_argument("--width", type=int, default=1024, help="hidden size (head_dim 64, GQA 4:1)")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32768)
    p.add_argument("--pushes", type=int, default=3)
    p.add_argument("--bucket-mb", type=int, default=512)
    p.add_argument("--engines", default="megatron,export,vllm:collective,vllm:collective:noverify,vllm:memory,vllm:disk")
    p.add_argument("--precision", default="fp32", help="fp32 | bf16 (the trainer's weights and the engine's dtype)")
    p.add_argument("--out", required=True)
    args = p.parse_args()

    import torch.distributed as dist

    from tulu_mcore import runtime
    from tulu_mcore.config.compose import compose
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.rollout.megatron_engine import MegatronEngine
    from tulu_mcore.rollout.vllm_engine import VllmEngine

    w = args.width
    cfg = compose(["runtime.device=cpu", "model.attention=sdpa", f"parallel.tp={args.tp}", "train.seq_length=256",
                   f"precision={args.precision}",
                   f"model.arch.hidden_size={w}", f"model.arch.intermediate_size={int(w * 3.5)}",
                   f"model.arch.num_attention_heads={w // 64}", f"model.arch.num_key_value_heads={w // 256}",
                   "model.arch.head_dim=64", f"model.arch.num_hidden_layers={args.layers}",
                   f"model.arch.vocab_size={args.vocab}", f"rlvr.vllm.bucket_mb={args.bucket_mb}"])
    rt = runtime.setup(cfg)
    arch = cfg.model.arch
    chunks = build_model(arch, rt.layout, cfg.precision, device="cpu", attention="sdpa", init=True)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for spec in args.engines.split(","):
            name, _, transport = spec.partition(":")
            transport, _, noverify = transport.partition(":")
            t0 = time.time()
            if name == "megatron":
                engine = MegatronEngine(chunks, eos_id=1, max_sequence_length=256)
            elif name == "export":  # the trainer's side alone: TP gather + bytes, nothing sent
                engine = ExportOnly()
            else:
                cfg.rlvr.vllm.transport = transport
                cfg.rlvr.vllm.verify_every = 0 if noverify else 1
                engine = VllmEngine.start(cfg, chunks, arch=arch, eos_id=1, run_dir=Path(tmp) / transport,
                                          log=lambda m: None)
            start_s = time.time() - t0
            times, verify, sent = [], [], 0
            for _ in range(args.pushes):
                dist.barrier()
                t = time.time()
                sent = engine.push_weights(chunks, arch)
                dist.barrier()
                times.append(time.time() - t)
                verify.append(getattr(engine, "push_stats", {}).get("weight_verify_s", 0.0))
            engine.close()
            med = statistics.median(times)
            results.append({"engine": spec, "start_s": start_s, "push_s": times, "median_push_s": med,
                            "verify_s": verify, "median_verify_s": statistics.median(verify),
                            "bytes": sent, "bytes_per_s": sent / med if sent else None})
    if dist.get_rank() == 0:
        summary = {"arch": arch.to_dict(), "params": arch.num_params, "tp": args.tp, "bucket_mb": args.bucket_mb,
                   "precision": args.precision,
                   "results": results}
        Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
        for r in results:
            rate = f"{r['bytes_per_s'] / 1e6:,.0f} MB/s" if r["bytes_per_s"] else "in place"
            print(f"{r['engine']:>24}: {r['bytes'] / 1e6:,.1f} MB in {r['median_push_s']:.3f} s ({rate}; "
                  f"verification {r['median_verify_s']:.3f} s); start-up {r['start_s']:.1f} s")
    runtime.teardown()


if __name__ == "__main__":
    main()
