"""PNG plots of a run's records (``run.dir/metrics.jsonl``) into ``run.dir/plots/``: one file per family
of numbers the records hold (loss, reward, accuracy, verified rate, KL, response length, throughput, LR,
gradient norm), one panel per key, over the step. Written by every run at its end (rank 0;
``metrics.plots``) and by ``tulu-plot RUN_DIR``. matplotlib's Agg canvas, without pyplot: no display,
no global backend."""

from __future__ import annotations

from pathlib import Path

from tulu_mcore.metrics.records import is_number, read_metrics

PLOTS_DIR = "plots"
WIDTH = 7.0  # inches, at 100 dpi

# file stem -> (title, keys); a key ending in '*' takes every key with that prefix
FAMILIES: dict[str, tuple[str, list[str]]] = {
    "loss": ("loss", ["token_mean_loss", "loss", "value_loss", "value_mse"]),
    "reward": ("reward", ["reward_mean", "rewards_chosen", "rewards_rejected", "score_chosen",
                          "score_rejected"]),
    "accuracy": ("preference accuracy and margin", ["accuracy", "margin"]),
    "verified_rate": ("verified rate", ["verified_rate", "verified_rate_*", "no_eos_rate"]),
    "kl": ("KL", ["kl", "approx_kl", "clip_fraction", "logprob_abs_diff"]),
    "response_length": ("response length (tokens)", ["response_length"]),
    "throughput": ("throughput", ["tokens_per_s", "tflops_per_gpu", "mfu", "step_time_s"]),
    "lr": ("learning rate", ["lr"]),
    "grad_norm": ("gradient norm", ["grad_norm", "value_grad_norm"]),
}


def _keys(records: list[dict], wanted: list[str]) -> list[str]:
    present = list(dict.fromkeys(k for r in records for k, v in r.items() if is_number(v)))
    out = []
    for w in wanted:
        out += [k for k in present if (k.startswith(w[:-1]) if w.endswith("*") else k == w)]
    return list(dict.fromkeys(out))


def write_plots(run_dir: str | Path, out_dir: str | Path | None = None, records: list[dict] | None = None,
                title: str | None = None) -> list[Path]:
    """One PNG per family with data in `records` (default: the run's metrics.jsonl) into `out_dir`
    (default run_dir/plots); the paths written."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    run_dir = Path(run_dir)
    records = read_metrics(run_dir) if records is None else records
    records = [r for r in records if "step" in r]
    out = Path(out_dir) if out_dir is not None else run_dir / PLOTS_DIR
    written = []
    for stem, (family, wanted) in FAMILIES.items():
        keys = _keys(records, wanted)
        if not keys:
            continue
        out.mkdir(parents=True, exist_ok=True)
        height = 0.95 + 1.8 * len(keys)  # inches; fixed margins (a layout engine triples the time)
        fig = Figure(figsize=(WIDTH, height))
        fig.subplots_adjust(left=1.05 / WIDTH, right=1 - 0.25 / WIDTH, top=1 - 0.45 / height, bottom=0.5 / height,
                            hspace=0.3 * 1.8 / 1.5)
        axes = fig.subplots(len(keys), 1, sharex=True, squeeze=False)[:, 0]
        for ax, key in zip(axes, keys):
            points = [(r["step"], r[key]) for r in records if is_number(r.get(key))]
            steps, values = zip(*points)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, markersize=3, linewidth=1.2)
            ax.set_ylabel(key)
            ax.grid(alpha=0.3)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[-1].set_xlabel("step")
        fig.suptitle(f"{title or run_dir.name}: {family}")
        path = out / f"{stem}.png"
        fig.savefig(path, dpi=100)
        written.append(path)
    return written
