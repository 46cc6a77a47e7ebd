"""``tulu-eval``: score a model on the Tülu 3 evaluation suites (lm-eval with our ``*_tulu`` task files).

    tulu-eval MODEL [tasks=tulu3_dev] [backend=hf|vllm|server] [limit=N] [out=DIR] [data=DIR] [key=value ...]
    tulu-eval compare DIR DIR ... [labels=sft,dpo,rlvr] [out=DIR]
    tulu-eval list

MODEL is a Hugging Face directory, a run directory (its hf/ export, else its latest checkpoint, exported
first) or a checkpoint (exported first, into OUT/hf).

keys:
  tasks=      presets and task names, comma-separated (default tulu3_dev). Presets: tulu3_dev (MMLU 0-shot
              CoT and 5-shot MC, PopQA, TruthfulQA MC2, BBH CoT, DROP, MATH flex, GSM8K, HumanEval(+) pass@10,
              IFEval), tulu3_unseen (MMLU-Pro, GPQA, AGIEval-en, DeepMind Mathematics, BigCodeBench-Hard),
              demo (tulu-demo's held-out prompts). Benchmarks a preset cannot run here (LLM-judge and
              classifier suites, IFEval-OOD) are listed in the table as not run, with the reason.
  backend=    hf (transformers in this process; default), vllm (vLLM's server started on the export from
              $TULU_VLLM_PYTHON's environment), server (an OpenAI-compatible endpoint: url=)
  url=        backend=server: the endpoint's base URL, e.g. http://HOST:8000/v1
  vllm_args=  backend=vllm: more `vllm serve` options, quoted, e.g. vllm_args="--tensor-parallel-size 8"
  limit=      the first N rows of each task (quick runs)
  data=       a local folder of benchmark rows: DIR/<benchmark>/test.jsonl (+ fewshot.jsonl); default: the
              hub datasets in the local Hugging Face cache (HF_DATASETS_OFFLINE=1 without internet)
  include=    more lm-eval task folders (comma-separated); their tasks can be named in tasks=
  out=        output directory (default runs/eval/<model's name>): results.json, results.md, results.png,
              samples_<task>.jsonl
  max_gen_toks=  cap every task's new tokens; repeats=  cap pass@k samples (quick runs; recorded)
  device=, dtype= (auto: bf16 on GPU, fp32 on CPU), batch_size= (8), max_length= (4096), seed= (1234),
  num_concurrent= (4, server requests in flight)

The chat template of the export is applied (few-shot examples as turns) with no BOS, as Tülu trains;
tasks whose OLMES setting is not chat (DROP) run without it.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from tulu_mcore.errors import UserError, cli_errors

_INT = ("limit", "batch_size", "max_length", "max_gen_toks", "repeats", "seed", "num_concurrent")
_KEYS = ("tasks", "backend", "url", "limit", "data", "include", "out", "max_gen_toks", "repeats", "device", "dtype",
         "batch_size", "max_length", "seed", "num_concurrent", "vllm_args")


def _parse(items: list[str], allowed: tuple[str, ...]) -> tuple[list[str], dict]:
    positional, kv = [], {}
    for it in items:
        if "=" in it and not it.startswith("/") and it.split("=", 1)[0].isidentifier():
            k, v = it.split("=", 1)
            if k not in allowed:
                raise UserError(f"unknown key {k!r}; keys: {', '.join(allowed)} (tulu-eval --help)")
            if k in _INT:
                try:
                    v = int(v)
                except ValueError:
                    raise UserError(f"{k}={v}: an integer is expected") from None
            kv[k] = v
        else:
            positional.append(it)
    return positional, kv


def _compare(argv: list[str]) -> None:
    from tulu_mcore.evaluation import report
    from tulu_mcore.evaluation.harness import read_results

    dirs, kv = _parse(argv, ("labels", "out"))
    if len(dirs) < 2:
        raise UserError("tulu-eval compare needs two or more result directories")
    recs = [read_results(Path(d)) for d in dirs]
    labels = kv["labels"].split(",") if "labels" in kv else [Path(d).name for d in dirs]
    if len(labels) != len(recs):
        raise UserError(f"labels= names {len(labels)} results; {len(recs)} were given")
    text = report.compare_table(recs, labels)
    print(text, end="")
    if "out" in kv:
        out = Path(kv["out"])
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(text)
        report.plot(recs, labels, out / "compare.png")
        print(f"written: {out / 'compare.md'}, {out / 'compare.png'}")


def _list() -> None:
    from tulu_mcore.evaluation import presets
    from tulu_mcore.evaluation.harness import TASKS_DIR, task_configs

    names = sorted(p.stem for p in TASKS_DIR.glob("*_tulu.yaml"))
    cfgs = task_configs(names, [])
    for name, p in presets.PRESETS.items():
        print(f"{name}: {', '.join(p['tasks'])}" + (f"; not run: {', '.join(p['not_run'])}" if p["not_run"] else ""))
    for n in names:
        print(f"  {n:22s} {(cfgs[n].get('metadata') or {}).get('olmes_id') or ''}")


@cli_errors
def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return
    if argv[0] == "compare":
        return _compare(argv[1:])
    if argv[0] == "list":
        return _list()
    from tulu_mcore.evaluation import presets
    from tulu_mcore.evaluation.harness import Settings, evaluate
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    positional, kv = _parse(argv, _KEYS)
    if len(positional) != 1:
        raise UserError("tulu-eval takes one MODEL (an HF directory, a run directory or a checkpoint), then "
                        "key=value settings (tulu-eval --help)")
    model = positional[0]
    tasks, not_run = presets.expand(str(kv.pop("tasks", "tulu3_dev")))
    out = Path(kv.pop("out", None) or Path("runs/eval") / Path(model.rstrip("/")).name)
    include = [p for p in str(kv.pop("include", "")).split(",") if p]
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    rec = evaluate(model, Settings(tasks=tasks, include=include, not_run=not_run, **kv), out)
    print((out / "results.md").read_text(), end="")
    print(f"written: {out / 'results.json'}, {out / 'results.md'}, {out / 'results.png'} "
          f"({rec['settings']['seconds']:.0f} s)")


if __name__ == "__main__":
    main()
