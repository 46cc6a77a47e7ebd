"""Per-step metrics: ``run.dir/metrics.jsonl`` (always), TensorBoard and W&B (optional, see sinks.py), a
progress display on rank 0 (a bar with ETA on a terminal, one line per step in a log; each recipe's key
numbers, see console.py), RL rollout samples in ``run.dir/samples.jsonl`` (samples.py) and, at the end,
PNG plots in ``run.dir/plots/`` (plots.py)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from tulu_mcore.metrics import samples as rollout_samples
from tulu_mcore.metrics.console import summary
from tulu_mcore.metrics.records import METRICS_FILE, read_metrics
from tulu_mcore.metrics.sinks import TensorBoardSink, WandbSink, require_packages

__all__ = ["METRICS_FILE", "MetricsLogger", "read_metrics"]


class MetricsLogger:
    def __init__(self, run_dir: Path, *, start_step: int, total_steps: int, tensorboard: bool,
                 progress: bool, enabled: bool, name: str = "train", config=None):
        """`config`: the run's RunConfig (its `metrics` section: W&B, samples, plots; the whole as W&B's
        run config)."""
        self.enabled = enabled
        self.total = total_steps
        self.name = name
        self.t0 = time.time()
        self.start = start_step
        self.run_dir = run_dir
        self.path = run_dir / METRICS_FILE
        opts = getattr(config, "metrics", None)
        self.samples_every = getattr(opts, "samples_every", 0)
        self.samples_per_step = getattr(opts, "samples_per_step", 0)
        self.plots = getattr(opts, "plots", False)
        self.sinks: list = []
        self.bar = None
        if not enabled:
            return
        # a resumed run repeats the steps after its checkpoint: drop their old records
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        rollout_samples.keep_until(run_dir, start_step)
        self.file = open(self.path, "a")
        require_packages(SimpleNamespace(tensorboard=tensorboard, wandb=getattr(opts, "wandb", False)))
        if tensorboard:
            self.sinks.append(TensorBoardSink(run_dir, name))
        if getattr(opts, "wandb", False):
            from omegaconf import OmegaConf

            self.sinks.append(WandbSink(run_dir, name, OmegaConf.to_container(OmegaConf.structured(config)),
                                        opts.wandb_project, opts.wandb_name))
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step", dynamic_ncols=True)
        self.lines = progress and self.bar is None

    require_packages = staticmethod(require_packages)  # TrainingRun checks at start-up, before any work

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        for sink in self.sinks:
            sink.log(record)
        short = summary(record)
        if self.bar is not None:
            self.bar.set_postfix_str(short, refresh=False)
            self.bar.update(1)
        elif self.lines:
            done = step - self.start
            eta = (time.time() - self.t0) / max(done, 1) * (self.total - step)
            print(f"[{self.name}] step {step}/{self.total} {short} eta {_hms(eta)}", flush=True)

    def samples(self, step: int, batch, rollouts) -> None:
        """RL: a few of rank 0's rollouts of `step` (1-based) into samples.jsonl when due (see samples.py)."""
        if self.enabled and rollout_samples.due(step, self.samples_every):
            rollout_samples.append(self.run_dir, rollout_samples.rollout_samples(step, batch, rollouts,
                                                                                 self.samples_per_step))

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        for sink in self.sinks:
            sink.close()
        self.file.close()
        if self.plots:
            from tulu_mcore.metrics.plots import write_plots

            try:
                written = write_plots(self.run_dir)
            except Exception as e:  # a plot is never worth a failed run
                print(f"[{self.name}] warning: no plots ({type(e).__name__}: {e})", flush=True)
            else:
                if written:
                    print(f"[{self.name}] plots: {written[0].parent} ({len(written)} PNG files)", flush=True)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
