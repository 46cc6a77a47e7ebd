"""Conversion benchmark: HF -> megatron -> HF on a synthetic (random-weight) model, one process each way.

Reports, for each direction: GB/s of the conversion itself (model bytes / time, in a fresh process
whose imports are done before the clock starts) and of the whole command as users run it
(interpreter start and imports included); the peak RSS of the process tree (sampled every 20 ms);
and whether the round trip is bit-identical.

    python benchmarks/conversion.py --model llama3_2_1b --dtype bf16 --workdir /tmp/tulu-bench
"""

from __future__ import annotations

import argparse
import json
import os
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
    return {"wall_s": wall, "peak_rss_bytes": peak, "stdout": out}


PHASE = """
import json, sys, time
import torch, megatron.core, transformers  # the imports, outside the timed part
from tulu_mcore.runtime.logs import quiet_known_warnings
from tulu_mcore.convert.hf_to_mcore import convert_hf_to_mcore
from tulu_mcore.convert.mcore_to_hf import convert_mcore_to_hf
quiet_known_warnings()
if __name__ == "__main__":
    what, src, dst = sys.argv[1:4]
    t0 = time.perf_counter()
    if what == "hf_to_mcore":
        convert_hf_to_mcore(src, dst, overwrite=True)
    else:
        convert_mcore_to_hf(src, dst, overwrite=True, max_shard_bytes=10**9, progress=False)
    print("PHASE_SECONDS", time.perf_counter() - t0)
"""


def timed_conversion(what: str, src: Path, dst: Path, script: Path) -> dict:
    """The conversion in a fresh process whose imports are done before the clock starts. Dirty pages
    of earlier steps are flushed first, so that their write-back does not land in this measurement."""
    os.sync()
    res = run_measured([sys.executable, str(script), what, str(src), str(dst)])
    res["conversion_s"] = float(res.pop("stdout").split("PHASE_SECONDS")[1])
    return res


def import_overhead() -> dict:
    """Peak RSS and time of a process that only imports what the converter imports."""
    code = "import torch, megatron.core, transformers, tulu_mcore.convert.hf_to_mcore, tulu_mcore.convert.mcore_to_hf"
    res = run_measured([sys.executable, "-c", code])
    del res["stdout"]
    return res


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
    script = work / "phase.py"
    script.write_text(PHASE)
    res["hf_to_mcore"] = timed_conversion("hf_to_mcore", hf_dir, ckpt, script)
    res["mcore_to_hf"] = timed_conversion("mcore_to_hf", ckpt, back, script)
    # the commands as users run them (interpreter start and imports included)
    for name, cmd_args in (("hf_to_mcore_cli", ["hf-to-mcore", str(hf_dir), str(ckpt), "--overwrite"]),
                       ("mcore_to_hf_cli", ["mcore-to-hf", str(ckpt), str(back), "--overwrite",
                                            "--max-shard-size", "1GB"])):
        os.sync()
        r = run_measured(cli + cmd_args)
        res[name] = {"wall_s": r["wall_s"], "GB_per_s": size / 1e9 / r["wall_s"]}
    back_hf = HFCheckpoint(back)
    bad = [n for n in hf._where if not torch.equal(hf.read(n), back_hf.read(n))]
    res["round_trip_bit_identical"] = not bad and set(hf._where) == set(back_hf._where)
    gib = 1 << 30
    for k in ("hf_to_mcore", "mcore_to_hf"):
        r = res[k]
        r["GB_per_s"] = size / 1e9 / r["conversion_s"]
        r["peak_rss_GiB"] = r["peak_rss_bytes"] / gib
        r["peak_minus_model_GiB"] = (r["peak_rss_bytes"] - size) / gib
    print(json.dumps(res, indent=2))
    print(f"\nmodel {args.model} {args.dtype}: {size / gib:.2f} GiB ({arch.num_params / 1e9:.3f}B params)")
    print(f"import-only process: {res['import_only']['wall_s']:.1f} s, "
          f"{res['import_only']['peak_rss_bytes'] / gib:.2f} GiB RSS")
    for k in ("hf_to_mcore", "mcore_to_hf"):
        r, c = res[k], res[k + "_cli"]
        print(f"{k}: conversion {r['conversion_s']:.1f} s = {r['GB_per_s']:.2f} GB/s (whole command "
              f"{c['wall_s']:.1f} s = {c['GB_per_s']:.2f} GB/s); peak RSS {r['peak_rss_GiB']:.2f} GiB "
              f"(model {'+' if r['peak_minus_model_GiB'] >= 0 else '-'} {abs(r['peak_minus_model_GiB']):.2f} GiB)")
    print(f"round trip bit-identical: {res['round_trip_bit_identical']}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
