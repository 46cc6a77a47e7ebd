"""tulu-eval's outputs: ``results.json`` (lm-eval's results plus model, commit and settings),
``results.md`` (a table, with the Tülu 3 model cards' numbers where the model has a Tülu 3 size),
``results.png`` (a bar chart), ``samples_<task>.jsonl`` (every prompt and response); and the side-by-side
comparison of several outputs (``tulu-eval compare``)."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

from tulu_mcore.evaluation import presets


def _commit() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def _jsonable(obj):
    from lm_eval.utils import handle_non_serializable

    return json.loads(json.dumps(obj, default=handle_non_serializable))


def record(*, model: str, hf_dir: Path, settings: dict, runs: list[dict], configs: dict[str, dict]) -> dict:
    from importlib.metadata import version

    config = json.loads((hf_dir / "config.json").read_text())
    scores = {}
    for run in runs:
        for task, res in run["results"].items():
            meta = (configs.get(task) or {}).get("metadata") or {}
            metrics = {k.split(",")[0]: v for k, v in res.items()
                       if "," in k and "_stderr" not in k and isinstance(v, (int, float))}
            primary = meta.get("primary") or next(iter(metrics), None)
            scores[task] = {"metric": primary, "value": metrics.get(primary), "metrics": metrics,
                            "n": (run.get("n-samples") or {}).get(task, {}).get("effective"),
                            "olmes_id": meta.get("olmes_id")}
    lm_eval = [_jsonable({k: v for k, v in run.items() if k != "samples"}) for run in runs]
    return {"model": str(model), "hf_dir": str(hf_dir), "commit": _commit(), "tulu_mcore": version("tulu-mcore"),
            "lm_eval_version": version("lm_eval"), "size": presets.size_of(config), "settings": settings,
            "scores": {t: scores[t] for t in settings["tasks"] if t in scores},
            "not_run": settings.get("not_run", {}), "lm_eval": lm_eval}


def write(rec: dict, runs: list[dict], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(rec, indent=2) + "\n")
    for run in runs:
        for task, samples in (run.get("samples") or {}).items():
            with open(out / f"samples_{task}.jsonl", "w") as f:
                for s in samples:
                    f.write(json.dumps(_jsonable(s)) + "\n")
    (out / "results.md").write_text(table(rec))
    plot([rec], [rec["model"]], out / "results.png")


def _pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def average(rec: dict) -> float | None:
    """Equal-weight average of the primary scores (as the Tülu 3 suites report theirs)."""
    vals = [s["value"] for s in rec["scores"].values() if s["value"] is not None and not math.isnan(s["value"])]
    return sum(vals) / len(vals) if vals else None


def table(rec: dict) -> str:
    size = rec.get("size")
    ref = presets.REFERENCE.get(size, {})
    cols = ["task", "setting (OLMES)", "metric", "score", "n"]
    if ref:
        cols += [f"Tülu 3 {size} SFT", f"Tülu 3 {size} DPO", f"Tülu 3 {size}"]
    lines = [f"# tulu-eval: {rec['model']}", "",
             f"backend {rec['settings']['backend']}, limit {rec['settings']['limit']}, commit {rec['commit']}, "
             f"lm-eval {rec['lm_eval_version']}", "",
             "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for task, s in rec["scores"].items():
        row = [task, s.get("olmes_id") or "", s["metric"] or "", _pct(s["value"]), str(s.get("n") or "")]
        if ref:
            row += [f"{v:.1f}" for v in ref[task]] if task in ref else ["—"] * 3
        lines.append("| " + " | ".join(row) + " |")
    avg = average(rec)
    if avg is not None:
        lines += ["", f"Average (equal weight, {len(rec['scores'])} tasks): {_pct(avg)}"]
    if rec.get("not_run"):
        lines += ["", "Not run here:"] + [f"- {name}: {why}" for name, why in rec["not_run"].items()]
    return "\n".join(lines) + "\n"


def compare_table(recs: list[dict], labels: list[str]) -> str:
    tasks = list(dict.fromkeys(t for r in recs for t in r["scores"]))
    lines = ["| task | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for t in tasks:
        lines.append(f"| {t} | " + " | ".join(_pct(r["scores"].get(t, {}).get("value")) for r in recs) + " |")
    lines.append("| average | " + " | ".join(_pct(average(r)) for r in recs) + " |")
    return "\n".join(lines) + "\n"


def plot(recs: list[dict], labels: list[str], path: Path) -> None:
    """Grouped horizontal bars: one group per task, one bar per result (percent)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(t for r in recs for t in r["scores"]))
    height = 0.8 / max(1, len(recs))
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.45 * len(tasks) * max(1, len(recs)) ** 0.5))
    for i, (r, label) in enumerate(zip(recs, labels)):
        vals = [100 * (r["scores"].get(t, {}).get("value") or 0.0) for t in tasks]
        ys = [k + i * height for k in range(len(tasks))]
        bars = ax.barh(ys, vals, height=height, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
    ax.set_yticks([k + height * (len(recs) - 1) / 2 for k in range(len(tasks))], tasks)
    ax.invert_yaxis()
    ax.set_xlim(0, 105)
    ax.set_xlabel("score (%)")
    if len(recs) > 1:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
