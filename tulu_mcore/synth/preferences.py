"""``tulu-synth preferences``: Tülu 3's on-policy preference data (paper §5.2.1, UltraFeedback's
pipeline): completions of each prompt from a pool of models (the policy's own SFT model first, then any
others, each served in turn), rated by an LLM judge on four aspects, binarized into chosen/rejected.

Stages (sharded, resumable): ``completions-<model>`` per model, ``ratings`` (the judge; malformed
judgements asked again up to judge.retries times, then the prompt is dropped and counted), then task 0
binarizes (see :mod:`~tulu_mcore.synth.binarize`), passes the pairs through tulu-decontam and writes
``pairs.jsonl`` in the preference-mixture format (``chosen``/``rejected`` conversations, with
``chosen_rating``, ``rejected_rating``, ``chosen_model``, ``rejected_model`` and every completion's
mean rating). ``pairs=if_verified`` pairs a completion that passes the prompt's IFEval ground truth
with one that fails it, no judge needed.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from pathlib import Path

from tulu_mcore.data.rlvr import prompt_messages
from tulu_mcore.rewards import check
from tulu_mcore.synth import binarize as bz
from tulu_mcore.synth import judge as jd
from tulu_mcore.synth.common import Timer, bad, digest, finish, load, throughput, timed
from tulu_mcore.synth.engines import Engines
from tulu_mcore.synth.shards import Stage, read_jsonl, task_of, write_jsonl


def _prompt(row) -> dict:
    """A prompt row: its messages up to the last user turn (rows with messages, prompt, or a chosen
    conversation); its ground truth and dataset when it has them."""
    if not isinstance(row, dict):
        raise bad("malformed row", "not an object")
    messages = row.get("messages")
    if messages is None and isinstance(row.get("chosen"), list):
        messages = row["chosen"]
    if messages is None and isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    if messages is None:
        raise bad("no prompt", "expected messages (a list of {role, content}), a prompt string or a chosen conversation")
    messages = prompt_messages(messages)  # a reference answer dropped: every model writes its own
    truth = row.get("ground_truth")
    if isinstance(truth, list) and len(truth) == 1:
        truth = truth[0]
    return {"messages": messages, "ground_truth": truth, "dataset": row.get("dataset")}


def instruction_of(messages: list[dict]) -> str:
    """What the judge reads as the instruction: the user turn, or the conversation with role labels."""
    if len(messages) == 1:
        return messages[0]["content"]
    return "\n\n".join(f"{m['role'].capitalize()}: {m['content']}" for m in messages)


def label_of(path: str, taken: set[str]) -> str:
    name = Path(str(path).rstrip("/")).name or "model"
    if name == "hf":
        name = Path(str(path).rstrip("/")).parent.name
    label, k = name, 2
    while label in taken:
        label, k = f"{name}-{k}", k + 1
    taken.add(label)
    return label


def models_of(cfg) -> list[tuple[str, str]]:
    taken: set[str] = set()
    out = [("policy", cfg.policy)] if cfg.policy else []
    taken.update(label for label, _ in out)
    return out + [(label_of(p, taken), str(p)) for p in cfg.pool]


def make_completions(cfg, gen, prompts: list[dict], seed: int, timer: Timer, label: str) -> list[dict]:
    outs = timer.chat(gen, [p["messages"] for p in prompts], n=cfg.completions_per_model,
                      max_new_tokens=cfg.sampling.max_new_tokens, temperature=cfg.sampling.temperature, seed=seed)
    return [{"id": p["id"], "model": label,
             "outputs": None if o is None else [{"text": c.text, "finished": c.finished} for c in o]}
            for p, o in zip(prompts, outs)]


class Rater:
    """The judge over one shard: every (prompt, aspect) request in one engine call per attempt."""

    def __init__(self, cfg, gen, timer: Timer, seed: int):
        self.cfg, self.gen, self.timer, self.seed = cfg, gen, timer, seed
        self.stats = Counter()

    def rate(self, rows: list[dict]) -> None:
        j = self.cfg.judge
        # jobs: (row, aspect, completion index or None for all, conversation)
        jobs = []
        for r in rows:
            texts = [c["text"] for c in r["completions"]]
            instruction = instruction_of(r["messages"])
            r["ratings"] = {a: [None] * len(texts) for a in j.aspects}
            r["raw_ratings"] = {a: [] for a in j.aspects} if self.cfg.tulu3_compat else None
            for a in j.aspects:
                convs = jd.requests(j.template, a, instruction, texts)
                for idx, conv in enumerate(convs):
                    jobs.append((r, a, idx if j.template == "single" else None, conv))
        attempts = 1 if self.cfg.tulu3_compat else 1 + j.retries
        for attempt in range(attempts):
            if not jobs:
                break
            outs = self.timer.chat(self.gen, [conv for *_, conv in jobs], n=1, max_new_tokens=j.max_new_tokens,
                                   temperature=j.temperature, seed=self.seed + 7 * attempt)
            self.stats["requests"] += len(jobs)
            failed = []
            for job, out in zip(jobs, outs):
                r, a, idx, conv = job
                if out is None:  # the judge prompt leaves no room within engine.max_model_len: never retried
                    if r["dropped"] is None:
                        self.stats["judge_prompt_too_long"] += 1
                    r["dropped"] = "judge_prompt_too_long"
                    continue
                text = out[0].text
                if self.cfg.tulu3_compat:
                    vals = jd.parse_tulu3(text or "", a)
                    r["raw_ratings"][a] = vals if idx is None else r["raw_ratings"][a] + vals[:1]
                    continue
                n = 1 if idx is not None else len(r["completions"])
                vals = jd.parse(text, a, n)
                if vals is None:
                    self.stats["malformed"] += 1
                    self.stats["malformed_" + a] += 1
                    failed.append(job)
                    continue
                if attempt:
                    self.stats["recovered_by_retry"] += 1
                if idx is None:
                    r["ratings"][a] = [None if math.isnan(v) else v for v in vals]
                else:
                    r["ratings"][a][idx] = None if math.isnan(vals[0]) else vals[0]
            jobs = failed
        for r, a, idx, _ in jobs:  # still malformed after every retry: the prompt is dropped
            if r["dropped"] is None:
                r["dropped"] = "judge_failed"
            self.stats["failed_after_retries"] += 1


def rate_rows(cfg, gen, prompts: list[dict], completions: dict[str, dict], labels: list[str], seed: int,
              timer: Timer) -> tuple[list[dict], Counter]:
    """The ratings stage for `prompts`: each prompt's completions gathered from every model, checked,
    then judged (or verified, pairs=if_verified)."""
    rows, stats = [], Counter()
    for p in prompts:
        row = {"id": p["id"], "messages": p["messages"], "ground_truth": p["ground_truth"], "dataset": p["dataset"],
               "completions": [], "dropped": None}
        missing = [m for m in labels if completions[m][p["id"]]["outputs"] is None]
        if missing:  # Tülu 3 kept a prompt only when every model answered it
            row["dropped"] = "missing_output"
            stats["missing_output_" + missing[0]] += 1
        else:
            for m in labels:
                for c in completions[m][p["id"]]["outputs"]:
                    if cfg.drop_truncated and not c["finished"]:
                        stats["truncated_completions"] += 1
                        continue
                    row["completions"].append({"model": m, "text": c["text"]})
            if len(row["completions"]) < 2:
                row["dropped"] = "fewer_than_two_completions"
            # the judge sees them in a seeded random order: no model's place (the policy's first) decides
            # ties or which completions the released binarization's first four means cover
            random.Random(f"{cfg.seed}/order/{p['id']}").shuffle(row["completions"])
        rows.append(row)
    live = [r for r in rows if r["dropped"] is None]
    if cfg.pairs == "if_verified":
        for r in live:
            if str(r["dataset"]).lower() != "ifeval":
                r["dropped"] = "no_ifeval_ground_truth"
                continue
            r["verified"] = [check("ifeval", c["text"], r["ground_truth"]).verified for c in r["completions"]]
    elif live:
        rater = Rater(cfg, gen, timer, seed)
        rater.rate(live)
        stats.update(rater.stats)
    return rows, stats


def pair_of(cfg, r: dict) -> tuple[dict | None, str]:
    """The pair of one rated prompt, or None and why not."""
    rng = random.Random(f"{cfg.seed}/{r['id']}")
    comps = r["completions"]
    means = None
    if cfg.pairs == "if_verified":
        good = [i for i, v in enumerate(r["verified"]) if v]
        poor = [i for i, v in enumerate(r["verified"]) if not v]  # (a failing text never equals a passing one)
        if not good or not poor:
            return None, "all_verified" if good else "none_verified"
        picked = (good[0], poor[rng.randrange(len(poor))])
    elif cfg.tulu3_compat:
        means = bz.mean_ratings_tulu3(r["raw_ratings"])
        picked = bz.binarize_tulu3(means, len(comps), rng)
    else:
        means = bz.mean_ratings({a: [math.nan if v is None else v for v in vals] for a, vals in r["ratings"].items()})
        picked = bz.binarize(means, rng, [c["text"] for c in comps])
    if isinstance(picked, str):
        return None, picked
    c, j = picked
    # Tülu's rows: the prompt string beside the whole conversations (a longer prompt: its messages)
    prompt = r["messages"][0]["content"] if len(r["messages"]) == 1 else r["messages"]
    pair = {"id": r["id"], "prompt": prompt,
            "chosen": r["messages"] + [{"role": "assistant", "content": comps[c]["text"]}],
            "rejected": r["messages"] + [{"role": "assistant", "content": comps[j]["text"]}],
            "chosen_model": comps[c]["model"], "rejected_model": comps[j]["model"]}
    if means is not None:
        pair.update(chosen_rating=_num(means[c]), rejected_rating=_num(means[j]),
                    ratings=[_num(m) for m in means[:len(comps)]], models=[x["model"] for x in comps])
    if r.get("dataset") is not None:
        pair["source"] = r["dataset"]
    return pair, "degenerate" if c == j else "pair"


def _num(x) -> float | None:
    return None if x is None or math.isnan(x) else round(float(x), 4)


def run(cfg, log=print) -> dict | None:
    task, tasks = task_of(cfg)
    out = Path(cfg.out)
    prompts = load(list(cfg.prompts), _prompt, "prompts", cfg.seed)
    if cfg.limit is not None:
        prompts = prompts[:cfg.limit]
    for i, p in enumerate(prompts):
        p["id"] = digest(p["messages"], i)
    models = models_of(cfg)
    labels = [m for m, _ in models]
    engines = Engines(cfg.engine, out, seed=cfg.seed, task=task, log=log)
    ids = digest([p["id"] for p in prompts])
    e = cfg.engine
    settings = {"ids": ids, "engine": e.kind, "max_model_len": e.max_model_len, "precision": e.precision,
                "device": e.device, "seed": cfg.seed}
    try:
        stages = {}
        for label, path in models:
            st = Stage(out, f"completions-{label}", len(prompts), cfg.shard_size,
                       {**settings, "model": path, "n": cfg.completions_per_model, "sampling": vars(cfg.sampling)},
                       task=task, tasks=tasks, log=log)
            if engines.needed(st):
                gen = engines.open(path, label)
                st.run(timed(st, cfg.seed, lambda span, seed, timer, gen=gen, label=label: make_completions(
                    cfg, gen, [prompts[i] for i in span], seed, timer, label)))
            if engines.collective:  # the next model's load is collective: no rank may still be generating
                st.wait(cfg.wait_timeout_s)
            stages[label] = st
        for st in stages.values():
            st.wait(cfg.wait_timeout_s)
        completions = {m: {r["id"]: r for r in st.rows()} for m, st in stages.items()}
        ratings = Stage(out, "ratings", len(prompts), cfg.shard_size,
                        {**settings, "models": models, "judge": vars(cfg.judge), "pairs": cfg.pairs,
                         "compat": cfg.tulu3_compat, "drop_truncated": cfg.drop_truncated},
                        task=task, tasks=tasks, log=log)
        if engines.needed(ratings):
            judge = engines.open(cfg.judge.model, "judge") if cfg.pairs == "judge" else None

            def rate(span, seed, timer):
                rows, stats = rate_rows(cfg, judge, [prompts[i] for i in span], completions, labels, seed, timer)
                write_jsonl(ratings.dir / f"counts-{span.start // cfg.shard_size:05d}.jsonl", [stats])
                return rows
            ratings.run(timed(ratings, cfg.seed, rate))
    finally:
        engines.close_all()
    if task != 0:  # task 0 writes the final files
        return None
    ratings.wait(cfg.wait_timeout_s)
    return _finish(cfg, prompts, models, stages, ratings, log)


def _finish(cfg, prompts, models, stages, ratings: Stage, log) -> dict:
    rows = ratings.rows()
    counts = Counter()
    for f in sorted(ratings.dir.glob("counts-*.jsonl")):
        counts.update(read_jsonl(f)[0])
    outcome = Counter(r["dropped"] for r in rows if r["dropped"])
    pairs = []
    for r in rows:
        if r["dropped"]:
            continue
        pair, why = pair_of(cfg, r)
        outcome[why] += 1
        if pair is not None:
            pairs.append(pair)
    requests = counts.get("requests", 0)
    report = {"verb": "preferences", "models": dict(models), "judge": cfg.judge.model if cfg.pairs == "judge" else None,
              "judge_template": cfg.judge.template, "pairs_rule": cfg.pairs, "tulu3_compat": cfg.tulu3_compat,
              "engine": cfg.engine.kind, "prompts": len(prompts), "outcomes": dict(sorted(outcome.items())),
              "judge_requests": requests, "judge_malformed": counts.get("malformed", 0),
              "judge_parse_failure_rate": round(counts.get("malformed", 0) / requests, 4) if requests else None,
              "judge_recovered_by_retry": counts.get("recovered_by_retry", 0),
              "judge_failed_after_retries": counts.get("failed_after_retries", 0),
              "counts": {k: v for k, v in sorted(counts.items()) if k not in ("requests", "malformed")},
              "throughput": {**{f"completions-{m}": throughput(st.dir) for m, st in stages.items()},
                             "judge": throughput(ratings.dir)}}
    return finish(cfg, {"pairs": pairs}, report, log)
