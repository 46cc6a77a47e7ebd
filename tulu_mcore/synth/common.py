"""What the three verbs share: reading sources with file:line errors, per-shard seeds and stats, and the
final step (every output through tulu-decontam, then the report)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections import Counter
from pathlib import Path

from tulu_mcore.data.sources import load_items, source_specs
from tulu_mcore.data.template import ConversationError
from tulu_mcore.synth.shards import read_jsonl, write_jsonl


def load(sources, parse, what: str, seed: int) -> list:
    """Rows of `sources` (paths, hub names, builtin:...) through `parse`; a bad row stops with file:line."""
    items, _, _, _ = load_items(source_specs(list(sources) if isinstance(sources, (list, tuple)) else sources),
                                on_error="strict", seed=seed, parse=parse, what=what)
    return items


def bad(reason: str, message: str) -> ConversationError:
    return ConversationError(reason, message)


def shard_seed(seed: int, stage: str, k: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}/{stage}/{k}".encode()).digest()[:3], "little")  # engines fold it further


def digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Timer:
    """Generation time and tokens of one shard, kept beside it (stats.jsonl of the stage), for the
    report's throughput."""

    def __init__(self):
        self.seconds, self.prompts, self.tokens, self.calls = 0.0, 0, 0, 0

    def chat(self, gen, convs, **kw):
        t0 = time.time()
        out = gen.chat(convs, **kw)
        self.seconds += time.time() - t0
        self.calls += 1
        self.prompts += len(convs)
        self.tokens += sum(c.tokens for group in out if group for c in group)
        return out

    def record(self, stage_dir: Path, k: int) -> None:
        write_jsonl(stage_dir / f"stats-{k:05d}.jsonl", [{"seconds": self.seconds, "prompts": self.prompts,
                                                           "tokens": self.tokens, "calls": self.calls}])


def timed(stage, seed: int, work):
    """A stage's shard maker: `work(span, shard_seed, timer)`, its generation stats kept beside the shard."""
    def make(span, k):
        timer = Timer()
        rows = work(span, shard_seed(seed, stage.name, k), timer)
        timer.record(stage.dir, k)
        return rows
    return make


def throughput(stage_dir: Path) -> dict:
    s = Counter()
    for f in sorted(stage_dir.glob("stats-*.jsonl")):
        for r in read_jsonl(f):
            s.update(r)
    secs = s["seconds"]
    return {"prompts": s["prompts"], "tokens": s["tokens"], "seconds": round(secs, 3),  # no generation: rates None
            "prompts_per_s": round(s["prompts"] / secs, 3) if secs else None,
            "tokens_per_s": round(s["tokens"] / secs, 2) if secs else None}


def finish(cfg, outputs: dict[str, list[dict]], report: dict, log) -> dict:
    """Write each output as OUT/<name>.jsonl after tulu-decontam (its report in OUT/decontam/), then
    OUT/report.json and report.md; returns the report."""
    from tulu_mcore.data.decontam import decontaminate

    out = Path(cfg.out)
    staged = out / "candidates"
    paths = {}
    for name, rows in outputs.items():
        paths[name] = staged / f"{name}.jsonl"
        write_jsonl(paths[name], rows)
    removed = {}
    nonempty = [str(p) for name, p in paths.items() if outputs[name]]
    if cfg.decontam.enabled and nonempty:
        rep = decontaminate(nonempty, list(cfg.decontam.eval), out / "decontam", n=cfg.decontam.ngram,
                            threshold=cfg.decontam.threshold, log=log)
        for name, p in paths.items():
            f = rep.filtered.get(str(p))
            if f is None:
                shutil.copy(p, out / f"{name}.jsonl")
                removed[name] = 0
                continue
            shutil.copy(f["path"], out / f"{name}.jsonl")
            removed[name] = f["removed"]
    else:
        for name, p in paths.items():
            shutil.copy(p, out / f"{name}.jsonl")
            removed[name] = 0
    report["decontamination"] = {
        "enabled": bool(cfg.decontam.enabled), "eval": list(cfg.decontam.eval),
        **{name: {"rows": len(rows), "removed": removed[name],
                  "removed_share": round(removed[name] / len(rows), 4) if rows else 0.0}
           for name, rows in outputs.items()}}
    report["outputs"] = {name: {"path": str(out / f"{name}.jsonl"), "rows": len(rows) - removed[name]}
                         for name, rows in outputs.items()}
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / "report.md").write_text(markdown(report))
    for name, o in report["outputs"].items():
        log(f"{name}: {o['rows']:,} rows -> {o['path']} ({removed[name]:,} removed by decontamination)")
    log(f"report: {out / 'report.md'}")
    return report


def markdown(report: dict, depth: int = 2) -> str:
    lines = [f"# tulu-synth {report.get('verb', '')}", ""]

    def walk(d: dict, level: int) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                lines.append(f"{'#' * level} {k}")
                lines.append("")
                walk(v, min(level + 1, 6))
                lines.append("")
            else:
                lines.append(f"- {k}: {v}")

    walk({k: v for k, v in report.items() if k != "verb"}, depth)
    return "\n".join(lines) + "\n"
