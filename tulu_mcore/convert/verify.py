"""``tulu-convert verify``: run the HF model and the megatron checkpoint on one fixed prompt and compare.

The command starts its own ranks (``torchrun``, TP*PP*CP processes); rank 0 of the megatron model
writes the full logits to a temporary file. The reference runs in the driver process itself, which
never loads megatron-core or the CPU runtime: ``transformers`` with eager attention, an independent
implementation. The driver prints ``max_abs_logit_diff=<float>`` as its last line and exits 0 iff the
difference is within tolerance.
"""

from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass

import torch

from tulu_mcore.errors import UserError

FP32_TOL = 1e-4
# In bf16/fp16 the tolerance is this many times the dtype's own error on this model and prompt:
# max |HF in the low precision - HF in fp32| (two bf16 implementations differ by about that much).
LOW_PRECISION_FLOOR_FACTOR = 2.0
PROMPT = (
    "Tülu 3 is trained in three stages: supervised finetuning on curated conversations, direct preference "
    "optimization on on-policy preference pairs, and reinforcement learning with verifiable rewards on math, "
    "grade-school arithmetic and instruction-following prompts."
)


@dataclass
class VerifyArgs:
    hf_dir: str
    ckpt_dir: str
    tp: int = 1
    pp: int = 1
    vpp: int = 1
    cp: int = 1
    sp: bool = False
    device: str = "cpu"
    dtype: str = "fp32"
    seq_len: int = 64
    attention: str = "sdpa"

    def argv(self) -> list[str]:
        out = [self.hf_dir, self.ckpt_dir, "--tp", str(self.tp), "--pp", str(self.pp), "--vpp", str(self.vpp),
               "--cp", str(self.cp), "--device", self.device, "--dtype", self.dtype,
               "--seq-len", str(self.seq_len), "--attention", self.attention]
        return out + (["--sp"] if self.sp else [])

    @classmethod
    def from_namespace(cls, ns) -> "VerifyArgs":
        return cls(ns.hf_dir, ns.ckpt_dir, ns.tp, ns.pp, ns.vpp, ns.cp, ns.sp, ns.device, ns.dtype, ns.seq_len,
                   ns.attention)

    @property
    def length(self) -> int:
        """The prompt length: seq_len rounded up to what the layout splits evenly."""
        m = 2 * self.cp if self.cp > 1 else 1
        if self.sp:
            m = math.lcm(m, self.tp)
        return math.ceil(self.seq_len / m) * m


def prompt_tokens(hf_dir: str, vocab_size: int, length: int) -> torch.Tensor:
    """The fixed prompt as [1, length] ids: the tokenizer's encoding when the directory has one, else
    a seeded pseudo-random sequence. Repeated or cut to `length`."""
    ids: list[int] = []
    try:
        from transformers import AutoTokenizer

        if any(os.path.exists(os.path.join(hf_dir, f)) for f in ("tokenizer.json", "tokenizer.model")):
            ids = [i for i in AutoTokenizer.from_pretrained(hf_dir)(PROMPT)["input_ids"] if i < vocab_size]
    except Exception as e:  # the weights can still be checked: say so, and use the seeded ids
        print(f"warning: {hf_dir}: tokenizer unreadable ({type(e).__name__}: {e}); using seeded token ids",
              file=sys.stderr)
        ids = []
    if not ids:
        ids = torch.randint(0, vocab_size, (length,), generator=torch.Generator().manual_seed(0)).tolist()
    reps = math.ceil(length / len(ids))
    return torch.tensor((ids * reps)[:length]).unsqueeze(0)


def run_worker(a: VerifyArgs, logits_out: str) -> None:
    """The per-rank part: megatron logits of the prompt, written to `logits_out` by rank 0."""
    import torch.distributed as dist

    from tulu_mcore import runtime
    from tulu_mcore.checkpoint.dist import checkpoint_arch, load_model, read_meta
    from tulu_mcore.config.schema import (
        ModelConfig,
        ParallelConfig,
        PrecisionConfig,
        RunConfig,
        RuntimeConfig,
    )
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.models.logits import full_logits

    arch = checkpoint_arch(read_meta(a.ckpt_dir))
    cfg = RunConfig(
        model=ModelConfig(name="verify", arch=arch, attention=a.attention),
        parallel=ParallelConfig(tp=a.tp, pp=a.pp, vpp=a.vpp, cp=a.cp, sp=a.sp),
        precision=PrecisionConfig(name=a.dtype, params_dtype=a.dtype),
        runtime=RuntimeConfig(device=a.device),
    )
    rt = runtime.setup(cfg, training=False)
    chunks = build_model(arch, rt.layout, cfg.precision, device=rt.device, attention=a.attention, init=False)
    load_model(chunks, a.ckpt_dir)
    logits = full_logits(chunks, prompt_tokens(a.hf_dir, arch.vocab_size, a.length))
    if dist.get_rank() == 0:
        torch.save({"logits": logits.cpu(), "device": rt.device}, logits_out)
    runtime.teardown()


def reference_logits(a: VerifyArgs, tokens: torch.Tensor, dtype: str) -> torch.Tensor:
    from transformers import LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    from tulu_mcore.dtypes import TORCH_DTYPES

    hf_logging.disable_progress_bar()
    device = "cuda" if a.device == "cuda" else "cpu"
    model = LlamaForCausalLM.from_pretrained(a.hf_dir, dtype=TORCH_DTYPES[dtype], attn_implementation="eager")
    model = model.to(device).eval()
    with torch.no_grad():
        out = model(tokens.to(device)).logits.float().cpu()
    del model
    return out


def verify(a: VerifyArgs, tol: float | None = None) -> tuple[dict, bool]:
    """Start the ranks, compute the reference here, and judge the difference against `tol`."""
    import tempfile

    from tulu_mcore.checkpoint.dist import checkpoint_arch, read_meta
    from tulu_mcore.convert.hf_io import HFCheckpoint
    from tulu_mcore.runtime.launch import torchrun, user_errors

    hf = HFCheckpoint(a.hf_dir)  # input problems are reported here, before any rank starts
    if checkpoint_arch(read_meta(a.ckpt_dir)) != hf.arch:
        raise UserError(f"{a.ckpt_dir} holds a different architecture than {a.hf_dir}/config.json")
    with tempfile.TemporaryDirectory(prefix="tulu-verify-") as tmp:
        out = os.path.join(tmp, "logits.pt")
        proc = torchrun("tulu_mcore.convert.verify", a.argv() + ["--logits-out", out],
                        nproc=a.tp * a.pp * a.cp, capture=True)
        if proc.returncode != 0 or not os.path.exists(out):
            errors = user_errors(proc.stderr)
            if errors:  # a UserError on the ranks: the same clean message, exit 2
                raise UserError("\n".join(e.removeprefix("error: ") for e in errors))
            sys.stderr.write(proc.stderr[-6000:])
            raise SystemExit(1)
        got = torch.load(out, weights_only=True)  # tensors only, written by its own ranks
    tokens = prompt_tokens(a.hf_dir, hf.arch.vocab_size, a.length)
    ref = reference_logits(a, tokens, a.dtype)
    logits = got["logits"]
    diff = (logits - ref).abs()
    floor = None
    if a.dtype != "fp32":
        floor = (ref - reference_logits(a, tokens, "fp32")).abs().max().item()
    if tol is None:
        tol = FP32_TOL if floor is None else LOW_PRECISION_FLOOR_FACTOR * floor
    result = {
        "layout": f"tp{a.tp} pp{a.pp} vpp{a.vpp} cp{a.cp} sp{int(a.sp)}",
        "dtype": a.dtype,
        "device": got["device"],
        "tokens": a.length,
        "max_abs_logit": ref.abs().max().item(),
        "mean_abs_logit_diff": diff.mean().item(),
        "argmax_agreement": (logits.argmax(-1) == ref.argmax(-1)).float().mean().item(),
        **({"noise_floor": floor} if floor is not None else {}),
        "tolerance": tol,
        "max_abs_logit_diff": diff.max().item(),
    }
    return result, result["max_abs_logit_diff"] <= tol


def worker_main(argv: list[str] | None = None) -> None:
    from tulu_mcore.convert.arguments import verify_parser

    p = verify_parser()
    p.add_argument("--logits-out", required=True)
    ns = p.parse_args(argv)
    run_worker(VerifyArgs.from_namespace(ns), ns.logits_out)


if __name__ == "__main__":
    from tulu_mcore.errors import cli_errors
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    cli_errors(worker_main)()
