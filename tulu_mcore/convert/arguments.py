"""The command-line arguments of ``tulu-convert`` that its verify worker (started under torchrun by
:func:`tulu_mcore.convert.verify.verify`) parses too: defined once, here, for both."""

from __future__ import annotations

import argparse


def add_layout_args(p: argparse.ArgumentParser, *, with_cp: bool = False) -> None:
    g = p.add_argument_group("parallel layout (the product must equal the number of ranks)")
    g.add_argument("--tp", type=int, default=1, help="tensor-parallel size (default 1)")
    g.add_argument("--pp", type=int, default=1, help="pipeline-parallel size (default 1)")
    g.add_argument("--vpp", type=int, default=1, help="virtual pipeline stages per rank (default 1)")
    if with_cp:
        g.add_argument("--cp", type=int, default=1, help="context-parallel size (default 1)")
        g.add_argument("--sp", action="store_true", help="sequence parallel (needs --tp > 1)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="where the ranks compute (default cpu: gloo and the CPU runtime)")


VERIFY_DESCRIPTION = (
    "Run the HF model (transformers, eager attention) and the megatron checkpoint on a fixed prompt at "
    "the given layout; the last line printed is max_abs_logit_diff=<float>; exit 0 iff it is within "
    "tolerance. Starts TP*PP*CP ranks itself."
)


def verify_parser(prog: str = "tulu-convert verify") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description=VERIFY_DESCRIPTION)
    add_verify_args(p)
    return p


def add_verify_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("hf_dir", help="Hugging Face model directory (config.json + safetensors)")
    p.add_argument("ckpt_dir", help="torch_dist checkpoint written by tulu-convert or tulu-train")
    add_layout_args(p, with_cp=True)
    p.add_argument("--dtype", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="compute dtype of both models (default fp32)")
    p.add_argument("--tol", type=float, default=None,
                   help="largest acceptable |logit difference| (default: 1e-4 in fp32; in bf16/fp16 twice "
                   "the dtype's own error, max |HF in that dtype - HF in fp32|, reported as noise_floor)")
    p.add_argument("--seq-len", type=int, default=64, help="prompt length in tokens (default 64)")
    p.add_argument("--attention", choices=("sdpa", "flex", "te"), default="sdpa",
                   help="core attention of the megatron model (default sdpa)")
