"""Each benchmark's rows, from a local folder or the local Hugging Face cache, in one schema per benchmark.

A local folder (``tulu-eval data=DIR``) holds ``DIR/<benchmark>/test.jsonl`` and, where the benchmark
takes few-shot examples from data, ``DIR/<benchmark>/fewshot.jsonl``; rows use the fields of
:data:`SCHEMAS` (what a hub row becomes after :func:`_from_hub`). Without a folder the rows come from
the benchmark's hub dataset through ``datasets`` (the local cache; set ``HF_DATASETS_OFFLINE=1`` on a
machine without internet). Few-shot examples that are part of a benchmark's standard prompt (GSM8K's 8
chain-of-thought exemplars, Minerva's 4, BBH's 3 per task, TruthfulQA's 6 QA pairs) are read from the
installed lm-eval's own task files, never copied here.

lm-eval hands a task's few-shot sampler the document being evaluated only when both come from the same
split, and per-subject few-shot (MMLU's 5 per subject, BBH's 3 per task) needs it: so :func:`load`
returns one split, ``test``, holding the evaluated rows and the few-shot rows, the latter marked
``_fewshot``; the task files split them again (``utils.eval_docs`` / ``utils.fewshot_docs``).
"""

from __future__ import annotations

import json
import random
import re
from importlib import resources
from pathlib import Path

import yaml

from tulu_mcore.errors import UserError

# the fields of a benchmark's rows (local test.jsonl / fewshot.jsonl), "subject" optional everywhere
SCHEMAS = {
    "gsm8k": ("question", "answer"),  # answer: the final number (or a solution ending "#### N")
    "minerva_math": ("problem", "answer"),  # or "solution" with a \boxed{} answer
    "ifeval": ("key", "prompt", "instruction_id_list", "kwargs"),
    "bbh": ("input", "target", "subject"),
    "drop": ("passage", "question", "answers"),  # answers: list of gold answers (each a string or a list)
    "popqa": ("question", "possible_answers"),
    "truthfulqa": ("question", "mc2_targets"),  # mc2_targets: {"choices": [...], "labels": [0/1...]}
    "mmlu": ("question", "choices", "answer", "subject"),  # answer: the index of the right choice
    "humaneval": ("task_id", "prompt", "test", "entry_point"),
    "humanevalplus": ("task_id", "prompt", "test", "entry_point"),
    "mmlu_pro": ("question", "options", "answer", "category"),  # answer: the letter
    "gpqa": ("question", "choices", "answer"),
    "agieval_en": ("question", "choices", "answer", "subject"),
    "deepmind_math": ("question", "answer", "subject"),
    "bigcodebench_hard": ("task_id", "instruct_prompt", "test", "entry_point"),  # test: a unittest TestCases
    # the demo's held-out prompts (tulu-demo): RLVR rows, scored by our verifiers
    "demo": ("messages", "ground_truth", "dataset"),
}

MATH_SUBJECTS = ("algebra", "counting_and_probability", "geometry", "intermediate_algebra", "number_theory",
                 "prealgebra", "precalculus")
AGIEVAL_EN = ("aqua-rat", "gaokao-english", "logiqa-en", "lsat-ar", "lsat-lr", "lsat-rc", "sat-en",
              "sat-en-without-passage", "sat-math")
POPQA_SHOTS = 15
BIGCODEBENCH_RELEASE = "v0.1.4"


def load(benchmark: str, data_dir: str | None = None, fewshot: bool = True, **_) -> dict:
    """``{"test": Dataset}`` with the evaluated rows and the few-shot rows (``_fewshot``) of `benchmark`
    (none for a zero-shot task: ``fewshot=False``)."""
    import datasets

    if benchmark not in SCHEMAS:
        raise UserError(f"unknown benchmark {benchmark!r}; known: {', '.join(SCHEMAS)}")
    if data_dir:
        test, shots = _from_folder(benchmark, Path(data_dir))
    else:
        test, shots = _from_hub(benchmark)
    if not fewshot:
        shots = []
    elif shots is None:
        shots = _standard_fewshot(benchmark, test)
    if benchmark == "bbh":  # each task's description precedes its shots and its question
        described = {r["subject"]: r["description"] for r in shots if r.get("description")}
        test = [{**r, "description": r.get("description") or described.get(r["subject"], "")} for r in test]
    if shots is _HELD_OUT:  # PopQA has one split: its first rows are the shots, not scored
        shots, test = test[:POPQA_SHOTS], test[POPQA_SHOTS:]
    rows = [{**r, "_fewshot": False} for r in test] + [{**r, "_fewshot": True} for r in shots]
    for r in rows:
        r.setdefault("subject", r.get("category", ""))
    # one JSON string column per nested field keeps Arrow's schema inference out of the rows' shapes;
    # every row gets every column (from_list takes the columns from the first row)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    return {"test": datasets.Dataset.from_list([_flatten({k: r.get(k) for k in columns}) for r in rows])}


_NESTED = ("instruction_id_list", "kwargs", "answers", "possible_answers", "mc2_targets", "choices", "options",
           "messages", "ground_truth")


def _flatten(row: dict) -> dict:
    return {k: (json.dumps(v) if k in _NESTED and not isinstance(v, str) else v) for k, v in row.items()}


def field(doc: dict, name: str):
    """A nested field of a loaded row (stored as JSON text), decoded."""
    v = doc[name]
    if name in _NESTED and isinstance(v, str) and v[:1] in "[{":
        return json.loads(v)
    return v


_HELD_OUT = []  # marker: the benchmark's first rows serve as its shots


def _read_jsonl(path: Path, benchmark: str) -> list[dict]:
    from tulu_mcore.data.sources import iter_jsonl

    optional = {"category"} | ({"subject"} if benchmark != "bbh" else set())  # bbh's shots are per task
    need = [f for f in SCHEMAS[benchmark] if f not in optional]
    rows = []
    for lineno, row in iter_jsonl(path):
        missing = [f for f in need if f not in row]
        if benchmark == "minerva_math" and "answer" not in row and "solution" in row:
            missing.remove("answer")
        if missing:
            raise UserError(f"{path}:{lineno}: a {benchmark} row needs the field(s) {', '.join(missing)} "
                            f"(fields of {benchmark} rows: {', '.join(SCHEMAS[benchmark])})")
        rows.append(_normalise(benchmark, row))
    if not rows:
        raise UserError(f"{path}: no rows")
    return rows


def _from_folder(benchmark: str, root: Path) -> tuple[list[dict], list[dict] | None]:
    folder = root / benchmark
    test = folder / "test.jsonl"
    if not test.is_file():
        raise UserError(f"{test} does not exist: a local {benchmark} set is {folder}/test.jsonl (rows with "
                        f"{', '.join(SCHEMAS[benchmark])}) and, for few-shot examples of your own, fewshot.jsonl")
    fewshot = folder / "fewshot.jsonl"
    return _read_jsonl(test, benchmark), (_read_jsonl(fewshot, benchmark) if fewshot.is_file() else None)


def _normalise(benchmark: str, row: dict) -> dict:
    row = dict(row)
    if benchmark == "gsm8k":
        row["answer"] = str(row["answer"]).split("####")[-1].strip()
    elif benchmark == "minerva_math" and "answer" not in row:
        from tulu_mcore.rewards.math_answer import last_boxed

        row["answer"] = last_boxed(row["solution"]) or ""
    elif benchmark == "drop":
        row["answers"] = [a if isinstance(a, list) else [a] for a in row["answers"]]
    elif benchmark == "popqa" and isinstance(row["possible_answers"], str):
        row["possible_answers"] = json.loads(row["possible_answers"])
    return row


def _hub(path: str, name: str | None, split: str):
    import datasets

    try:
        return datasets.load_dataset(path, name, split=split)
    except Exception as e:  # not cached, gated, offline: say what to do
        raise UserError(f"cannot load the hub dataset {path}{f' ({name})' if name else ''}, split {split}: "
                        f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}; download it into the "
                        f"local HF cache on a machine with internet, or give a local folder (data=DIR)") from None


def _from_hub(benchmark: str) -> tuple[list[dict], list[dict] | None]:
    b = benchmark
    if b == "gsm8k":
        return [_normalise(b, r) for r in _hub("openai/gsm8k", "main", "test")], None
    if b == "minerva_math":
        return [_normalise(b, {**r, "subject": s}) for s in MATH_SUBJECTS
                for r in _hub("EleutherAI/hendrycks_math", s, "test")], None
    if b == "ifeval":
        return list(_hub("google/IFEval", None, "train")), None
    if b == "bbh":
        return [{**r, "subject": s} for s in _bbh_subjects() for r in _hub("SaylorTwift/bbh", s, "test")], None
    if b == "drop":
        from lm_eval.tasks.drop.utils import get_answers

        def conv(r):
            return {"passage": r["passage"], "question": r["question"], "answers": [list(a) for a in get_answers(r)]}

        return [conv(r) for r in _hub("EleutherAI/drop", None, "validation")], \
            [conv(r) for r in _hub("EleutherAI/drop", None, "train").select(range(3))]
    if b == "popqa":
        return [_normalise(b, r) for r in _hub("akariasai/PopQA", None, "test")], _HELD_OUT
    if b == "truthfulqa":
        return list(_hub("truthfulqa/truthful_qa", "multiple_choice", "validation")), None
    if b == "mmlu":
        return list(_hub("cais/mmlu", "all", "test")), list(_hub("cais/mmlu", "all", "dev"))
    if b in ("humaneval", "humanevalplus"):
        path = "openai/openai_humaneval" if b == "humaneval" else "evalplus/humanevalplus"
        return list(_hub(path, None, "test")), None
    if b == "mmlu_pro":
        return list(_hub("TIGER-Lab/MMLU-Pro", None, "test")), None
    if b == "gpqa":
        return [_gpqa_row(i, r) for i, r in enumerate(_hub("Idavidrein/gpqa", "gpqa_main", "train"))], None
    if b == "bigcodebench_hard":  # the hub copy's splits are its releases
        return list(_hub("bigcode/bigcodebench-hard", None, BIGCODEBENCH_RELEASE)), None
    if b == "agieval_en":
        return [_agieval_row(s, r) for s in AGIEVAL_EN for r in _hub(f"hails/agieval-{s}", None, "test")], None
    raise UserError(f"{benchmark} has no hub copy that datasets>=4 can read (deepmind_math is a loading script); "
                    f"export it once to DIR/{benchmark}/test.jsonl and pass data=DIR")


def _gpqa_row(i: int, r: dict) -> dict:
    """GPQA's right answer is always its first field: the choices are shuffled, with a seed per row."""
    choices = [r["Correct Answer"], r["Incorrect Answer 1"], r["Incorrect Answer 2"], r["Incorrect Answer 3"]]
    order = list(range(4))
    random.Random(i).shuffle(order)
    return {"question": r["Question"], "choices": [choices[j].strip() for j in order], "answer": order.index(0)}


def _agieval_row(subject: str, r: dict) -> dict:
    query = re.sub(r"\s*A: Among A through [A-E], the answer is\s*$", "", r["query"])
    query = re.sub(r"\s*Answer Choices:.*$", "", query, flags=re.S).removeprefix("Q: ")
    choices = [re.sub(r"^\([A-E]\)\s*", "", c) for c in r["choices"]]
    return {"question": query, "choices": choices, "answer": int(r["gold"][0]), "subject": subject}


# --- the standard few-shot examples, read from the installed lm-eval's task files ---------------------

class _TagTolerantLoader(yaml.SafeLoader):
    pass


_TagTolerantLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def task_yaml(text: str):
    """An lm-eval task file's YAML with its ``!function`` tags read as None (nothing is imported)."""
    return yaml.load(text, Loader=_TagTolerantLoader)


def _lm_eval_task(relpath: str) -> dict:
    return task_yaml((resources.files("lm_eval") / "tasks" / relpath).read_text())


def _bbh_subjects() -> list[str]:
    folder = resources.files("lm_eval") / "tasks" / "bbh" / "cot_fewshot"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml") and not p.name.startswith("_"))


def _minerva_shots() -> list[dict]:
    """The list literal lm-eval's minerva_math/utils.py returns from list_fewshot_samples(), read with ast
    (importing that module needs the antlr runtime 4.11; Hydra pins 4.9)."""
    import ast

    tree = ast.parse((resources.files("lm_eval") / "tasks" / "minerva_math" / "utils.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "list_fewshot_samples")
    ret = next(n for n in ast.walk(fn) if isinstance(n, ast.Return))
    return ast.literal_eval(ret.value)


def _standard_fewshot(benchmark: str, test: list[dict]) -> list[dict]:
    if benchmark == "gsm8k":  # Wei et al.'s 8 chain-of-thought exemplars
        shots = _lm_eval_task("gsm8k/gsm8k-cot.yaml")["fewshot_config"]["samples"]
        return [{"question": s["question"], "solution": s["target"],
                 "answer": re.search(r"The answer is (.*)\.$", s["target"]).group(1)} for s in shots]
    if benchmark == "minerva_math":  # Minerva's 4 (Lewkowycz et al. 2022)
        return [{"problem": s["problem"], "solution": s["solution"], "answer": ""} for s in _minerva_shots()]
    if benchmark == "bbh":  # 3 chain-of-thought exemplars per task (Suzgun et al. 2022)
        out = []
        for s in sorted({r["subject"] for r in test}):
            cfg = _lm_eval_task(f"bbh/cot_fewshot/{s}.yaml")
            out += [{"input": x["input"], "target": x["target"], "subject": s, "description": cfg["description"]}
                    for x in cfg["fewshot_config"]["samples"]]
        return out
    if benchmark == "truthfulqa":  # the 6 QA pairs of the TruthfulQA paper's "QA prompt"
        text = _lm_eval_task("truthfulqa/truthfulqa_mc1.yaml")["doc_to_text"]
        pairs = re.findall(r"Q: (.*?)\n\s*A: (.*?)(?:\n|')", text.split("{{")[0])
        return [{"question": q.strip(), "answer": a.strip(), "mc2_targets": {"choices": [], "labels": []}}
                for q, a in pairs]
    if benchmark == "popqa":
        return _HELD_OUT
    if benchmark in ("mmlu", "drop"):
        raise UserError(f"{benchmark} takes its few-shot examples from data: give DIR/{benchmark}/fewshot.jsonl "
                        f"(MMLU: the dev split's 5 per subject; DROP: 3 training rows)")
    return []
