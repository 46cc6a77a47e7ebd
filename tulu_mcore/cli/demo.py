"""``tulu-demo``: the built-in tiny default, end to end on this machine.

Today it exercises the foundation: build a tiny random Llama-3.1-shaped model in Hugging Face format,
convert it to a megatron torch_dist checkpoint, check the checkpoint's logits against transformers at
several parallel layouts (2 ranks each, on CPU unless a GPU is present), export it back to HF format
and check that every tensor survived bit for bit.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from tulu_mcore.errors import UserError, cli_errors

LAYOUTS = ({"tp": 2}, {"tp": 2, "sp": True}, {"pp": 2}, {"pp": 2, "vpp": 2}, {"cp": 2})


def _step(msg: str) -> None:
    print(f"[tulu-demo] {msg}", flush=True)


def compare_hf_dirs(a: Path, b: Path) -> tuple[int, list[str]]:
    """(tensors compared, names that differ or are missing) between two HF directories."""
    import torch

    from tulu_mcore.convert.hf_io import HFCheckpoint

    ha, hb = HFCheckpoint(a), HFCheckpoint(b)
    names = sorted(set(ha._where) | set(hb._where))
    bad = [n for n in names if n not in ha._where or n not in hb._where or not torch.equal(ha.read(n), hb.read(n))]
    return len(names), bad


@cli_errors
def main(argv: list[str] | None = None) -> None:
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    p = argparse.ArgumentParser(prog="tulu-demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--model", default="tiny", help="model preset from conf/model (default tiny)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random weights (default 0)")
    args = p.parse_args(argv)

    import torch

    from tulu_mcore.config.compose import model_preset
    from tulu_mcore.convert.hf_to_mcore import convert_hf_to_mcore
    from tulu_mcore.convert.mcore_to_hf import convert_mcore_to_hf
    from tulu_mcore.convert.verify import VerifyArgs, verify
    from tulu_mcore.models.llama.tiny import make_hf_llama

    t0 = time.time()
    out = Path(args.out)
    arch = model_preset(args.model).arch
    if arch.num_params > 50e6:
        raise UserError(f"--model {args.model} has {arch.num_params / 1e9:.1f}B parameters; the demo "
                        "builds random weights on this machine: use a small preset such as tiny")
    hf_dir, ckpt, export = out / "hf-init", out / "mcore", out / "hf-export"
    _step(f"building a random {args.model} Llama ({arch.num_params / 1e6:.2f}M parameters) in {hf_dir}")
    make_hf_llama(hf_dir, arch, seed=args.seed, dtype=torch.float32)
    _step(f"converting HF -> megatron torch_dist: {ckpt}")
    convert_hf_to_mcore(str(hf_dir), str(ckpt), overwrite=True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    failed = []
    for lay in ({},) + LAYOUTS:
        a = VerifyArgs(str(hf_dir), str(ckpt), device=device, **lay)
        result, ok = verify(a)
        _step(f"logits vs transformers at {result['layout']} ({a.tp * a.pp * a.cp} rank(s), {device}): "
              f"max_abs_logit_diff={result['max_abs_logit_diff']:.2e} {'ok' if ok else 'FAILED'}")
        if not ok:
            failed.append(result["layout"])
    _step(f"converting megatron -> HF: {export}")
    convert_mcore_to_hf(str(ckpt), str(export), overwrite=True, progress=False)
    n, bad = compare_hf_dirs(hf_dir, export)
    _step(f"round trip HF -> megatron -> HF: {n - len(bad)}/{n} tensors bit-identical")
    if bad:
        failed.append(f"round trip ({len(bad)} tensors differ, e.g. {bad[:3]})")
    _step(f"done in {time.time() - t0:.0f}s" + (f"; FAILED: {failed}" if failed else "; all checks passed"))
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
