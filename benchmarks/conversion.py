"""Conversion benchmark: HF -> megatron -> HF on a synthetic (random-weight) model, one process each way.

Reports, for each direction, GB/s of the whole command (model bytes / wall time, interpreter start and
imports included) and of the conversion itself (the command's own report), the peak RSS of the
command's whole process tree (sampled every 20 ms), and checks that the round trip is bit-identical.

    python benchmarks/conversion.py --model llama3_2_1b --dtype bf16 --workdir /tmp/tulu-bench
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import torch


def run_measured(cmd: list[str]) -> dict:
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    stop = threading.Event()

    def sample():
        nonlocal peak
        p = psutil.Process(proc.pid)
        while not stop.is_set():
            try:
                procs = [p] + p.children(recursive=True)
                peak = max(peak, sum(x.memory_info().rss for x in procs if x.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.02)

    t = threading.Thread(target=sample, daemon=True)
    t0 = time.perf_counter()
    t.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    t.join()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}\n{err[-4000:]}")
    res = {"wall_s": wall, "peak_rss_bytes": peak}
    m = re.search(r"in ([0-9.]+) s \(([0-9.]+) GB/s\)", out)
    if m:  # the command's own account: conversion time after interpreter start-up
        res["conversion_s"], res["conversion_GB_per_s"] = float(m.group(1)), float(m.group(2))
    return res


def import_overhead() -> dict:
    """Peak RSS and time of a process that only imports what the converter imports."""
    code = "import torch, megatron.core, transformers, tulu_mcore.convert.hf_to_mcore, tulu_mcore.convert.mcore_to_hf"
    return run_measured([sys.executable, "-c", code])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="llama3_2_1b")
    ap.add_argument("--dtype", default="bf16", choices=("bf16", "fp32"))
    ap.add_argument("--workdir", default="/tmp/tulu-bench")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()

    from tulu_mcore.config.compose import model_preset
    from tulu_mcore.convert.hf_io import HFCheckpoint
    from tulu_mcore.dtypes import TORCH_DTYPES
    from tulu_mcore.models.llama.tiny import make_hf_llama

    work = Path(args.workdir)
    hf_dir, ckpt, back = work / "hf", work / "mcore", work / "hf-back"
    arch = model_preset(args.model).arch
    if not (hf_dir / "config.json").exists():
        print(f"building a random {args.model} in {hf_dir} ...", flush=True)
        make_hf_llama(hf_dir, arch, dtype=TORCH_DTYPES[args.dtype], max_shard_size="1GB")
    hf = HFCheckpoint(hf_dir)
    size = hf.nbytes
    cli = [sys.executable, "-m", "tulu_mcore.cli.convert"]
    res = {"model": args.model, "dtype": args.dtype, "params": arch.num_params, "model_bytes": size,
           "import_only": import_overhead()}
    res["hf_to_mcore"] = run_measured(cli + ["hf-to-mcore", str(hf_dir), str(ckpt), "--overwrite"])
    res["mcore_to_hf"] = run_measured(cli + ["mcore-to-hf", str(ckpt), str(back), "--overwrite",
                                             "--max-shard-size", "1GB"])
    back_hf = HFCheckpoint(back)
    bad = [n for n in hf._where if not torch.equal(hf.read(n), back_hf.read(n))]
    res["round_trip_bit_identical"] = not bad and set(hf._where) == set(back_hf._where)
    gib = 1 << 30
    for k in ("hf_to_mcore", "mcore_to_hf"):
        r = res[k]
        r["GB_per_s"] = size / 1e9 / r["wall_s"]
        r["peak_rss_GiB"] = r["peak_rss_bytes"] / gib
        r["peak_minus_model_GiB"] = (r["peak_rss_bytes"] - size) / gib
    print(json.dumps(res, indent=2))
    print(f"\nmodel {args.model} {args.dtype}: {size / gib:.2f} GiB ({arch.num_params / 1e9:.3f}B params)")
    print(f"import-only process: {res['import_only']['wall_s']:.1f} s, "
          f"{res['import_only']['peak_rss_bytes'] / gib:.2f} GiB RSS")
    for k in ("hf_to_mcore", "mcore_to_hf"):
        r = res[k]
        print(f"{k}: command {r['wall_s']:.1f} s = {r['GB_per_s']:.2f} GB/s; conversion {r['conversion_s']:.1f} s "
              f"= {r['conversion_GB_per_s']:.2f} GB/s; peak RSS {r['peak_rss_GiB']:.2f} GiB "
              f"(model {'+' if r['peak_minus_model_GiB'] >= 0 else '-'} {abs(r['peak_minus_model_GiB']):.2f} GiB)")
    print(f"round trip bit-identical: {res['round_trip_bit_identical']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
