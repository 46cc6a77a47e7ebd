"""``tulu-synth personas``: Tülu 3's persona-driven SFT data (paper §3.1.2): each persona, with a
skill's template, asks the generator for a problem in its voice; the generator then solves it.

Stages (each sharded and resumable): ``problems`` (one generation per persona; the prefix cut; a
problem that already holds an answer dropped) then ``solutions`` (k samples for math, kept by majority
vote over their final answers; one sample otherwise, instruction following kept when every constraint
verifies). Task 0 then removes exact and near-duplicate prompts, passes the outputs through
tulu-decontam and writes ``sft.jsonl`` (``messages`` rows, Tülu's persona format) and ``rlvr.jsonl``
(math with the majority answer as ground truth, instruction following with one constraint).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

from tulu_mcore.synth import constraints as cons
from tulu_mcore.synth import filters, templates
from tulu_mcore.synth.common import Timer, bad, digest, finish, load, throughput, timed
from tulu_mcore.synth.engines import Engines
from tulu_mcore.synth.shards import Stage, task_of

MATH = ("math", "grade_math", "algebra")
RLVR_DATASET = {"math": "MATH", "algebra": "MATH", "grade_math": "gsm8k"}
IF_EXAMPLE = ("Write a 300+ word summary of the wikipedia page about the history of the bicycle. Do not use any "
              "commas and highlight at least 3 sections that have titles in markdown format.")
# a constraint that repeats the request cannot be written into the request it repeats
IF_CATEGORIES = tuple(c for c in cons.CATEGORIES if c != "combination:repeat prompt")


def _persona(row) -> str:
    p = row.get("persona") if isinstance(row, dict) else None
    if not isinstance(p, str) or not p.strip():
        raise bad("no persona", 'expected {"persona": "<a non-empty description>"}')
    return p.strip()


def items_of(cfg, personas: list[str]) -> list[dict]:
    """(skill, persona) work items: each skill on its own slice of the personas (disjoint, in order)."""
    rest = personas[cfg.start:]
    per = cfg.per_skill if cfg.per_skill is not None else len(rest) // len(cfg.skills)
    items = []
    for j, skill in enumerate(cfg.skills):
        for i in range(j * per, min(len(rest), (j + 1) * per)):
            items.append({"skill": skill, "persona_index": cfg.start + i, "persona": rest[i]})
    return items


def _conv(cfg, text: str) -> list[dict]:
    system = [{"role": "system", "content": cfg.system_prompt}] if cfg.system_prompt else []
    return system + [{"role": "user", "content": text}]


def make_problems(cfg, gen, items: list[dict], seed: int, timer: Timer) -> list[dict]:
    rows, convs = [], []
    for it in items:
        row = {"id": f"personahub_{it['skill']}_{it['persona_index']}", **it, "constraints": [], "ground_truth": []}
        if it["skill"] == "instruction_following":
            rng = random.Random(f"{cfg.seed}/if/{it['persona_index']}")
            drawn = cons.sample(rng, rng.randint(1, 3), IF_CATEGORIES)
            row["constraints"] = [c.instruction for c in drawn]
            row["constraint_types"] = [c.category for c in drawn]
            row["ground_truth"] = [c.ground_truth() for c in drawn]
        rows.append(row)
        convs.append(_conv(cfg, templates.problem_prompt(it["skill"], it["persona"], row["constraints"], IF_EXAMPLE)))
    outs = timer.chat(gen, convs, n=1, max_new_tokens=cfg.problem.max_new_tokens,
                      temperature=cfg.problem.temperature, seed=seed)
    f = cfg.filters
    for row, out in zip(rows, outs):
        row["problem"], row["dropped"] = None, None
        if out is None:
            row["dropped"] = "prompt_too_long"
            continue
        c = out[0]
        problem = templates.extract_problem(row["skill"], c.text)
        if f.drop_truncated and not c.finished:
            row["dropped"] = "truncated"
        elif not problem:
            row["dropped"] = "empty"
        elif f.leaks and templates.LEAK.search(problem):
            row["dropped"] = "leaked_answer"
        row["problem"] = problem
    return rows


def make_solutions(cfg, gen, rows: list[dict], seed: int, timer: Timer) -> list[dict]:
    f = cfg.filters
    out_rows = []
    for k_samples, group in ((max(1, f.majority_k), [r for r in rows if r["skill"] in MATH]),
                             (1, [r for r in rows if r["skill"] not in MATH])):
        if not group:
            continue
        convs = [_conv(cfg, templates.solution_prompt(r["skill"], r["problem"])) for r in group]
        outs = timer.chat(gen, convs, n=k_samples, max_new_tokens=cfg.solution.max_new_tokens,
                          temperature=cfg.solution.temperature, seed=seed + k_samples)
        for r, samples in zip(group, outs):
            out_rows.append(_judge_solution(cfg, r, samples))
    order = {r["id"]: i for i, r in enumerate(rows)}
    return sorted(out_rows, key=lambda r: order[r["id"]])


def _judge_solution(cfg, r: dict, samples) -> dict:
    f = cfg.filters
    row = {k: r[k] for k in ("id", "skill", "persona_index", "problem", "constraints", "ground_truth")}
    row.update(input_persona=r["persona"], response=None, answer=None, dropped=None)
    if samples is None:
        row["dropped"] = "prompt_too_long"
        return row
    usable = [s for s in samples if s.finished or not f.drop_truncated]
    if not usable:
        row["dropped"] = "truncated"
        return row
    pick = usable[0]
    if r["skill"] in MATH and f.majority_k > 0:
        answers = [templates.answer_of(r["skill"], s.text) for s in samples]
        best = filters.majority(answers, f.majority_share)
        if best is None:
            row["dropped"] = "no_majority"
            return row
        key = filters.answer_key(best)
        pick = next((s for s, a in zip(samples, answers) if s in usable and a and filters.answer_key(a) == key), None)
        if pick is None:
            row["dropped"] = "truncated"
            return row
        row["answer"] = best
    if r["skill"] == "instruction_following" and f.verify_if and not filters.passes_constraints(pick.text, r["ground_truth"]):
        row["dropped"] = "constraint_failed"
        return row
    if not pick.text.strip():
        row["dropped"] = "empty"
    elif filters.has_keyword(pick.text, f.keywords):
        row["dropped"] = "keyword"
    row["response"] = pick.text
    return row


def run(cfg, log=print) -> dict | None:
    task, tasks = task_of(cfg)
    out = Path(cfg.out)
    personas = load([cfg.personas], _persona, "personas", cfg.seed)
    items = items_of(cfg, personas)
    if not items:
        from tulu_mcore.errors import UserError

        raise UserError(f"{cfg.personas}: no persona left for {len(cfg.skills)} skill(s) from start={cfg.start}")
    engines = Engines(cfg.engine, out, seed=cfg.seed, task=task, log=log)
    e = cfg.engine
    settings = dict(model=cfg.model, seed=cfg.seed, system=cfg.system_prompt, engine=e.kind,
                    max_model_len=e.max_model_len, precision=e.precision, device=e.device)
    f = cfg.filters
    try:
        problems = Stage(out, "problems", len(items), cfg.shard_size, {**settings, "items": digest(items),
                         "sampling": vars(cfg.problem), "filters": [f.drop_truncated, f.leaks]},
                         task=task, tasks=tasks, log=log)
        if engines.needed(problems):
            gen = engines.open(cfg.model, "generator")
            problems.run(timed(problems, cfg.seed, lambda span, seed, timer: make_problems(
                cfg, gen, [items[i] for i in span], seed, timer)))
        problems.wait(cfg.wait_timeout_s)
        kept = [r for r in problems.rows() if r["dropped"] is None]
        # the filters applied per solution (dedup runs at the end, over all of them)
        solution_filters = [f.drop_truncated, f.majority_k, f.majority_share, f.verify_if, list(f.keywords)]
        solutions = Stage(out, "solutions", len(kept), cfg.shard_size, {**settings, "problems": digest([r["id"] for r in kept]),
                          "sampling": vars(cfg.solution), "filters": solution_filters}, task=task, tasks=tasks, log=log)
        if engines.needed(solutions):
            gen = engines.open(cfg.model, "generator")
            solutions.run(timed(solutions, cfg.seed, lambda span, seed, timer: make_solutions(
                cfg, gen, [kept[i] for i in span], seed, timer)))
    finally:
        engines.close_all()
    if task != 0:  # task 0 writes the final files
        return None
    solutions.wait(cfg.wait_timeout_s)
    return _finish(cfg, problems, solutions, log)


def _finish(cfg, problems: Stage, solutions: Stage, log) -> dict:
    prob_rows, sol_rows = problems.rows(), solutions.rows()
    done = [r for r in sol_rows if r["dropped"] is None]
    f = cfg.filters
    dedup = filters.duplicates([r["problem"] for r in done], f.near_duplicates) if f.dedup else [None] * len(done)
    dropped = Counter(r["dropped"] for r in prob_rows if r["dropped"]) + Counter(r["dropped"] for r in sol_rows if r["dropped"])
    dropped.update(d for d in dedup if d)
    final = [r for r, d in zip(done, dedup) if d is None]
    sft, rlvr = [], []
    for r in final:
        user = {"role": "user", "content": r["problem"]}
        sft.append({"id": r["id"], "prompt": r["problem"], "input_persona": r["input_persona"], "skill": r["skill"],
                    "messages": [user, {"role": "assistant", "content": r["response"]}],
                    "constraints": r["constraints"]})
        if r["skill"] in RLVR_DATASET and r["answer"] is not None:
            rlvr.append({"id": r["id"], "messages": [user], "ground_truth": r["answer"],
                         "dataset": RLVR_DATASET[r["skill"]]})
        elif r["skill"] == "instruction_following" and len(r["ground_truth"]) == 1:
            rlvr.append({"id": r["id"], "messages": [user], "ground_truth": r["ground_truth"][0], "dataset": "ifeval",
                         "constraint": r["constraints"][0]})
    by_skill = Counter(r["skill"] for r in final)
    report = {"verb": "personas", "generator": cfg.model, "engine": cfg.engine.kind,
              "items": len(prob_rows), "problems_kept": len(prob_rows) - sum(1 for r in prob_rows if r["dropped"]),
              "solutions_kept": len(final), "kept_per_skill": dict(by_skill), "dropped": dict(sorted(dropped.items())),
              "filters": {k: v for k, v in vars(cfg.filters).items() if k != "keywords"},
              "throughput": {"problems": throughput(problems.dir), "solutions": throughput(solutions.dir)}}
    return finish(cfg, {"sft": sft, "rlvr": rlvr}, report, log)
