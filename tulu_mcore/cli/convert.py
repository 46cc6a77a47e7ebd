"""``tulu-convert``: move Llama weights between Hugging Face format and megatron torch_dist checkpoints."""

from __future__ import annotations

import argparse
import sys
import time

from tulu_mcore.convert.arguments import VERIFY_DESCRIPTION, add_layout_args, add_verify_args
from tulu_mcore.errors import cli_errors

DESCRIPTION = """\
Convert Llama 3.x weights between Hugging Face format and megatron-core torch_dist checkpoints, and
verify a conversion against transformers.

  tulu-convert hf-to-mcore HF_DIR OUT_DIR      HF config.json + safetensors -> torch_dist checkpoint
  tulu-convert mcore-to-hf CKPT_DIR OUT_DIR    torch_dist checkpoint -> config.json + sharded safetensors
  tulu-convert verify HF_DIR CKPT_DIR          logits of both on a fixed prompt, at a parallel layout

A torch_dist checkpoint loads at any TP/PP/VPP/CP/DP layout. Both conversions stream. hf-to-mcore
holds one copy of the model in the process (or, under torchrun with --tp/--pp, each rank reads and
holds only its own slices, for models larger than one host's memory):
  torchrun --nproc-per-node 8 -m tulu_mcore.cli.convert hf-to-mcore HF_DIR OUT_DIR --tp 8
mcore-to-hf holds one tensor at a time; under torchrun the output shards are split among the ranks.
Bad input (not a Llama checkpoint, missing or truncated files) exits with code 2 and one message.
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tulu-convert", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    h2m = sub.add_parser("hf-to-mcore", help="HF directory -> torch_dist checkpoint",
                         description="Convert a Hugging Face Llama directory to a torch_dist checkpoint "
                         "(model weights; config and tokenizer files travel along).")
    h2m.add_argument("hf_dir", help="Hugging Face model directory (config.json + safetensors)")
    h2m.add_argument("out_dir", help="new checkpoint directory")
    h2m.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                     help="dtype to store (default: that of the HF weights)")
    h2m.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")
    add_layout_args(h2m)
    h2m.add_argument("--pipeline-layout", type=_layer_counts, default=None, metavar="N,N,...",
                     help="decoder layers per pipeline segment, pp*vpp counts (default: even), as "
                     "parallel.pipeline_layout")

    m2h = sub.add_parser("mcore-to-hf", help="torch_dist checkpoint -> HF directory",
                         description="Export a torch_dist checkpoint as config.json + sharded "
                         "safetensors + index (+ tokenizer files), loadable by transformers and vLLM.")
    m2h.add_argument("ckpt_dir", help="torch_dist checkpoint directory, or a run directory (its latest "
                     "checkpoint)")
    m2h.add_argument("out_dir", help="new Hugging Face model directory")
    m2h.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default=None,
                     help="dtype to write (default: that of the checkpoint)")
    m2h.add_argument("--max-shard-size", default="2GB",
                     help="largest safetensors file, e.g. 500MB, 2GB, 5GiB (default 2GB)")
    m2h.add_argument("--overwrite", action="store_true", help="replace OUT_DIR if it exists")

    ver = sub.add_parser("verify", help="compare logits of an HF directory and a checkpoint",
                         description=VERIFY_DESCRIPTION)
    add_verify_args(ver)
    return p


def _layer_counts(text: str) -> list[int]:
    try:
        return [int(n) for n in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated counts: {text!r} (e.g. 7,8,8,7)") from None


def parse_size(text: str) -> int:
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    t = text.strip().upper()
    num = t.rstrip("KMGTIB")
    unit = t[len(num):]
    try:
        value = float(num) * units[unit]
    except (ValueError, KeyError):
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 500MB, 2GB)") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be positive: {text!r}")
    return int(value)


@cli_errors
def main(argv: list[str] | None = None) -> None:
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    if args.command == "hf-to-mcore":
        from tulu_mcore.convert.hf_to_mcore import convert_hf_to_mcore

        out = convert_hf_to_mcore(args.hf_dir, args.out_dir, overwrite=args.overwrite, tp=args.tp,
                                  pp=args.pp, vpp=args.vpp, pipeline_layout=args.pipeline_layout,
                                  device=args.device, dtype=args.dtype)
        _print_rank0(_summary(out, t0))
    elif args.command == "mcore-to-hf":
        from tulu_mcore.checkpoint.run import resolve_checkpoint
        from tulu_mcore.convert.mcore_to_hf import convert_mcore_to_hf

        try:
            shard = parse_size(args.max_shard_size)
        except argparse.ArgumentTypeError as e:
            from tulu_mcore.errors import UserError

            raise UserError(f"--max-shard-size: {e}") from None
        out = convert_mcore_to_hf(resolve_checkpoint(args.ckpt_dir), args.out_dir, overwrite=args.overwrite,
                                  dtype=args.dtype, max_shard_bytes=shard)
        _print_rank0(_summary(out, t0))
    elif args.command == "verify":
        from tulu_mcore.convert.verify import VerifyArgs, verify

        a = VerifyArgs.from_namespace(args)
        print(f"verifying {a.ckpt_dir} against {a.hf_dir} on {a.tp * a.pp * a.cp} rank(s) ...", flush=True)
        result, ok = verify(a, args.tol)
        for k, v in result.items():
            if k != "max_abs_logit_diff":
                print(f"{k}={v}")
        print(f"within_tolerance={ok}")
        print(f"max_abs_logit_diff={result['max_abs_logit_diff']:.3e}")
        sys.exit(0 if ok else 1)


def _summary(out, t0: float) -> str:
    """'wrote DIR: N GB in T s (R GB/s)', counting the bytes written and the conversion's own time."""
    from pathlib import Path

    seconds = time.perf_counter() - t0
    nbytes = sum(f.stat().st_size for f in Path(out).rglob("*") if f.is_file())
    return f"wrote {out}: {nbytes / 1e9:.2f} GB in {seconds:.1f} s ({nbytes / 1e9 / seconds:.2f} GB/s)"


def _print_rank0(msg: str) -> None:
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_rank() == 0:
        print(msg, flush=True)


if __name__ == "__main__":
    main()
