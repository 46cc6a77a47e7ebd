"""``tulu-synth rlvr``: prompts with verifiable ground truth in Tülu 3's RLVR format (``messages`` with
the user turn, ``ground_truth``, ``dataset``; paper §6.1):

* ``kind=gsm8k``: rows with ``question`` and ``answer`` (GSM8K's: the ground truth is the text after
  "####", commas dropped);
* ``kind=math``: rows with ``problem`` and ``solution`` (MATH's: the ground truth is the last
  ``\\boxed{}``);
* ``kind=ifeval``: instruction prompts (``messages`` or ``prompt``), each given one constraint of the
  25 IFEval categories drawn with its arguments: the constraint's sentence is appended to the user turn
  and the ground truth is the flat JSON object of ``allenai/RLVR-IFeval`` (``constraint_type`` and
  ``constraint`` kept beside it).

``fewshot``: a JSONL of ``{question, answer}`` exemplars put before each math question in the one user
turn ("Question: ...\\nAnswer: ..."), as Tülu 3's RLVR prompts carried them (GSM8K: 8 exemplars).
Rows are sharded like the other verbs' and decontaminated before they are final.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

from tulu_mcore.data.template import check_messages
from tulu_mcore.rewards.math_answer import last_boxed
from tulu_mcore.synth import constraints as cons
from tulu_mcore.synth.common import bad, digest, finish, load
from tulu_mcore.synth.shards import Stage, task_of


def _gsm8k(row) -> dict:
    q, a = (row.get("question"), row.get("answer")) if isinstance(row, dict) else (None, None)
    if not isinstance(q, str) or not isinstance(a, str) or "####" not in a:
        raise bad("not gsm8k", 'expected {"question": str, "answer": "... #### <number>"}')
    return {"question": q.strip(), "ground_truth": a.split("####")[-1].strip().replace(",", ""), "dataset": "gsm8k"}


def _math(row) -> dict:
    q, s = (row.get("problem"), row.get("solution")) if isinstance(row, dict) else (None, None)
    box = last_boxed(s) if isinstance(s, str) else None
    if not isinstance(q, str) or not box:
        raise bad("not math", 'expected {"problem": str, "solution": "... \\\\boxed{<answer>} ..."}')
    return {"question": q.strip(), "ground_truth": box, "dataset": "MATH"}


def _instruction(row) -> dict:
    if isinstance(row, dict) and isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    else:
        messages = row.get("messages") if isinstance(row, dict) else None
    if not isinstance(messages, list) or not messages:
        raise bad("no prompt", "expected messages or a prompt string")
    users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    if not users:
        raise bad("no prompt", "no user turn")
    check_messages([users[0], {"role": "assistant", "content": "(the response)"}])
    return {"question": users[0]["content"].strip()}


PARSE = {"gsm8k": _gsm8k, "math": _math, "ifeval": _instruction}


def _exemplar(row) -> tuple[str, str]:
    if not (isinstance(row, dict) and isinstance(row.get("question"), str) and isinstance(row.get("answer"), str)):
        raise bad("not an exemplar", 'expected {"question": str, "answer": str}')
    return row["question"].strip(), row["answer"].strip()


def _fewshot(path: str | None, seed: int) -> str:
    if not path:
        return ""
    return "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in load([path], _exemplar, "exemplars", seed))


def make_row(cfg, item: dict, index: int, shots: str) -> dict:
    if cfg.kind == "ifeval":
        rng = random.Random(f"{cfg.seed}/rlvr/{index}")
        c = cons.draw(rng.choice(cons.CATEGORIES), rng, item["question"])
        return {"messages": [{"role": "user", "content": f"{item['question']} {c.instruction}"}],
                "ground_truth": c.ground_truth(), "dataset": "ifeval", "constraint_type": c.category,
                "constraint": c.instruction}
    content = f"{shots}Question: {item['question']}\nAnswer:" if shots else item["question"]
    return {"messages": [{"role": "user", "content": content}], "ground_truth": item["ground_truth"],
            "dataset": item["dataset"]}


def run(cfg, log=print) -> dict | None:
    task, tasks = task_of(cfg)
    items = load(list(cfg.source), PARSE[cfg.kind], f"{cfg.kind} rows", cfg.seed)
    if cfg.limit is not None:
        items = items[:cfg.limit]
    shots = _fewshot(cfg.fewshot, cfg.seed)
    stage = Stage(Path(cfg.out), "rows", len(items), cfg.shard_size,
                  {"items": digest(items), "kind": cfg.kind, "shots": digest(shots), "seed": cfg.seed},
                  task=task, tasks=tasks, log=log)
    stage.run(lambda span, k: [make_row(cfg, items[i], i, shots) for i in span])
    stage.wait(cfg.wait_timeout_s)
    if task != 0:
        return None
    rows = stage.rows()
    kinds = Counter(r.get("constraint_type", r["dataset"]) for r in rows)
    report = {"verb": "rlvr", "kind": cfg.kind, "rows": len(rows), "by_type": dict(sorted(kinds.items())),
              "fewshot_exemplars": len(re.findall(r"^Question: ", shots, re.MULTILINE))}
    return finish(cfg, {"rlvr": rows}, report, log)
