"""The time of `tulu-eval tasks=tulu3_dev,tulu3_unseen limit=N` on the tiny model on CPU (hf backend).

    python benchmarks/eval_tiny.py [--limit 10] [--out /tmp/eval-bench] [--tasks tulu3_dev,tulu3_unseen]

The tiny model (random weights, the built-in tokenizer with the Tülu chat template) answers synthetic
rows in each benchmark's local schema (no hub data here): a random model rarely stops, so every
generation runs to its task's full length (512-2048 new tokens; HumanEval's 20 samples of 1024) — the
worst case of a run's generation budget. Each task runs on its own, for its own time; the whole
presets once more in one call. Prints one line per task and a JSON summary.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from pathlib import Path

WORDS = "river cloud lemon piano tiger maple orbit candle silver garden".split()


def sentence(rng: random.Random, n: int = 12) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "?"


def rows(benchmark: str, rng: random.Random, n: int) -> tuple[list[dict], list[dict] | None]:
    s = lambda k=12: sentence(rng, k)  # noqa: E731
    subjects = ["anatomy", "virology"]
    if benchmark == "gsm8k":
        return [{"question": s(), "answer": str(rng.randint(1, 99))} for _ in range(n)], None
    if benchmark == "minerva_math":
        return [{"problem": s(), "answer": str(rng.randint(1, 9)), "subject": rng.choice(["algebra", "geometry"])}
                for _ in range(n)], None
    if benchmark == "ifeval":
        return [{"key": i, "prompt": s(), "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]}
                for i in range(n)], None
    if benchmark == "bbh":
        return [{"input": s(), "target": "True", "subject": rng.choice(["boolean_expressions", "navigate"])}
                for _ in range(n)], None
    if benchmark == "drop":
        mk = lambda: {"passage": s(60), "question": s(), "answers": [rng.choice(WORDS)]}  # noqa: E731
        return [mk() for _ in range(n)], [mk() for _ in range(3)]
    if benchmark == "popqa":
        return [{"question": s(), "possible_answers": [rng.choice(WORDS)]} for _ in range(n + 15)], None
    if benchmark == "truthfulqa":
        return [{"question": s(), "mc2_targets": {"choices": [s(6) for _ in range(4)], "labels": [1, 1, 0, 0]}}
                for _ in range(n)], None
    if benchmark == "mmlu":
        mk = lambda subj: {"question": s(), "choices": [s(3) for _ in range(4)], "answer": rng.randint(0, 3),  # noqa: E731
                           "subject": subj}
        return [mk(rng.choice(subjects)) for _ in range(n)], [mk(subj) for subj in subjects for _ in range(5)]
    if benchmark in ("humaneval", "humanevalplus"):
        return [{"task_id": f"T/{i}", "prompt": f"def f{i}(x):\n    \"\"\"{s()}\"\"\"\n",
                 "test": "def check(f):\n    assert f(1) == 1\n", "entry_point": f"f{i}"} for i in range(n)], None
    if benchmark == "mmlu_pro":
        return [{"question": s(), "options": [s(3) for _ in range(10)], "answer": "C", "category": "law"}
                for _ in range(n)], None
    if benchmark == "gpqa":
        return [{"question": s(), "choices": [s(3) for _ in range(4)], "answer": 1} for _ in range(n)], None
    if benchmark == "agieval_en":
        return [{"question": s(), "choices": [s(3) for _ in range(5)], "answer": 2, "subject": "sat-math"}
                for _ in range(n)], None
    if benchmark == "bigcodebench_hard":
        return [{"task_id": f"B/{i}", "instruct_prompt": s(40), "entry_point": "task_func",
                 "test": "import unittest\nclass TestCases(unittest.TestCase):\n    def test_a(self):\n"
                         "        self.assertEqual(task_func(1), 1)\n"} for i in range(n)], None
    if benchmark == "deepmind_math":
        return [{"question": s(), "answer": str(rng.randint(1, 9)), "subject": "arithmetic"} for _ in range(n)], None
    raise ValueError(benchmark)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--limit", type=int, default=10)
    ap.add_argument("--out", default="/tmp/eval-bench")
    ap.add_argument("--tasks", default="tulu3_dev,tulu3_unseen", help="presets or tasks to time (tulu-eval tasks=)")
    args = ap.parse_args()
    import dataclasses

    import torch

    from tulu_mcore.config.compose import model_preset
    from tulu_mcore.convert.mcore_to_hf import serve_as_trained
    from tulu_mcore.data.sources import TINY_TOKENIZER
    from tulu_mcore.evaluation import presets
    from tulu_mcore.evaluation.harness import Settings, evaluate
    from tulu_mcore.models.llama.tiny import make_hf_llama

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    arch = dataclasses.replace(model_preset("tiny").arch)
    hf = out / "hf"
    make_hf_llama(hf, arch, seed=0, init_std=0.02)
    for f in TINY_TOKENIZER.iterdir():
        shutil.copy2(f, hf / f.name)
    serve_as_trained(hf, arch)
    rng = random.Random(0)
    data = out / "data"
    for b in ("gsm8k", "minerva_math", "ifeval", "bbh", "drop", "popqa", "truthfulqa", "mmlu", "humaneval",
              "humanevalplus", "mmlu_pro", "gpqa", "agieval_en", "deepmind_math", "bigcodebench_hard"):
        test, shots = rows(b, rng, args.limit)
        (data / b).mkdir(parents=True)
        (data / b / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in test))
        if shots:
            (data / b / "fewshot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in shots))
    tasks, _ = presets.expand(args.tasks)
    per_task = {}
    for t in tasks:
        t0 = time.time()
        evaluate(str(hf), Settings(tasks=[t], data=str(data), limit=args.limit, batch_size=8), out / "runs" / t)
        per_task[t] = time.time() - t0
        print(f"{t:22s} {per_task[t]:7.1f} s", flush=True)
    t0 = time.time()
    rec = evaluate(str(hf), Settings(tasks=tasks, data=str(data), limit=args.limit, batch_size=8), out / "all")
    total = time.time() - t0
    print(json.dumps({"limit": args.limit, "tasks": len(tasks), "threads": torch.get_num_threads(),
                      "per_task_s": {k: round(v, 1) for k, v in per_task.items()}, "one_call_s": round(total, 1),
                      "average": rec["scores"] and round(sum(s["value"] for s in rec["scores"].values())
                                                         / len(rec["scores"]), 4)}, indent=1))


if __name__ == "__main__":
    main()
