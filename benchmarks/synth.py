"""tulu-synth throughput on this machine: each verb on the megatron engine and on vLLM, with the main
job's models (run ``tulu-demo`` first): its SFT model as generator and policy, its judge (the SFT model
taught the short judge format) as judge; every output decontaminated against the demo's held-out prompts.

    python benchmarks/synth.py --demo runs/demo --out runs/synth-bench [--engines megatron,vllm]

Prints and writes OUT/results.json: per verb and engine, prompts/s and tokens/s of each generation
stage, the rows kept, the judge's parse-failure rate, and the share decontamination removed.
vLLM needs $TULU_VLLM_PYTHON (scripts/vllm-env.sh). Not a test: numbers for benchmarks/ reports.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PERSONAS = ["a retired sailor who restores wooden boats", "a nurse on night shifts in a children's hospital",
            "a chess coach for teenagers", "a beekeeper in the mountains", "a young architect who loves bridges",
            "a baker who experiments with sourdough", "a museum guide for ancient coins",
            "a marathon runner who teaches physics", "a farmer who grows heirloom tomatoes",
            "a librarian who collects maps", "a jazz pianist on tour", "a park ranger who counts birds"]


def synth(verb: str, args: list[str]) -> float:
    t0 = time.time()
    proc = subprocess.run([sys.executable, "-m", "tulu_mcore.cli.synth", verb, *args], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"tulu-synth {verb} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", default="runs/demo", help="a tulu-demo output directory")
    ap.add_argument("--out", default="runs/synth-bench")
    ap.add_argument("--engines", default="megatron,vllm")
    args = ap.parse_args()
    demo, out = Path(args.demo).resolve(), Path(args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    personas = out / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    heldout = demo / "heldout" / "demo" / "test.jsonl"
    common = ["engine.max_model_len=1024", f"decontam.eval=[{heldout}]", "shard_size=16"]
    results = {}
    for engine in args.engines.split(","):
        eng = [f"engine.kind={engine}", "engine.vllm.enforce_eager=true", *common]
        runs = {
            "personas": ["personas", [f"personas={personas}", f"model={demo / 'sft'}", "per_skill=4",
                                      "skills=[math,instruction_following,code]", "problem.max_new_tokens=48",
                                      "solution.max_new_tokens=48", "filters.majority_k=4"]],
            "preferences": ["preferences", [f"prompts=[{demo / 'decontam' / 'preference_demo.jsonl'}]", "limit=96",
                                            f"policy={demo / 'sft'}", f"judge.model={demo / 'judge'}",
                                            "judge.template=single", "judge.max_new_tokens=8",
                                            "completions_per_model=2", "sampling.max_new_tokens=32"]],
        }
        for name, (verb, extra) in runs.items():
            d = out / f"{name}-{engine}"
            seconds = synth(verb, [*extra, *eng, f"out={d}"])
            rep = json.loads((d / "report.json").read_text())
            results[f"{name}/{engine}"] = {"wall_s": round(seconds, 1), "throughput": rep["throughput"],
                                          "outputs": rep["outputs"], "decontamination": rep["decontamination"],
                                          **{k: rep[k] for k in ("judge_requests", "judge_parse_failure_rate",
                                                                 "outcomes", "dropped", "solutions_kept")
                                             if k in rep}}
            print(f"{name}/{engine}: {json.dumps(results[f'{name}/{engine}'])}", flush=True)
    d = out / "rlvr"
    from tulu_mcore.data.sources import (
        BUILTIN,  # the raw prompts: template-made, they overlap the held-out ones
    )

    seconds = synth("rlvr", ["kind=ifeval", f"source=[{BUILTIN['builtin:rlvr-demo']}]", f"out={d}", *common])
    rep = json.loads((d / "report.json").read_text())
    results["rlvr"] = {"wall_s": round(seconds, 1), "rows": rep["rows"], "decontamination": rep["decontamination"]}
    print(f"rlvr: {json.dumps(results['rlvr'])}")
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {out / 'results.json'}")


if __name__ == "__main__":
    main()
