"""Per-step metrics: ``run.dir/metrics.jsonl`` (always), TensorBoard (optional), and a progress display
on rank 0 (a bar with ETA on a terminal, one line per step in a log)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tulu_mcore.errors import UserError

METRICS_FILE = "metrics.jsonl"


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / METRICS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLogger:
    def __init__(self, run_dir: Path, *, start_step: int, total_steps: int, tensorboard: bool,
                 progress: bool, enabled: bool, name: str = "train"):
        self.enabled = enabled
        self.total = total_steps
        self.name = name
        self.t0 = time.time()
        self.start = start_step
        self.path = run_dir / METRICS_FILE
        self.tb = None
        self.bar = None
        if not enabled:
            return
        # a resumed run repeats the steps after its checkpoint: drop their old records
        kept = [r for r in read_metrics(run_dir) if r.get("step", 0) <= start_step]
        self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self.file = open(self.path, "a")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                raise UserError("metrics.tensorboard=true needs the tensorboard package: pip install tensorboard") from None
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        if progress and sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=total_steps, initial=start_step, desc=name, unit="step", dynamic_ncols=True)
        self.lines = progress and self.bar is None

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        step = record["step"]
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self.tb.add_scalar(f"{self.name}/{k}", v, step)
        short = f"loss {record['loss']:.4f} lr {record['lr']:.2e} gnorm {record['grad_norm']:.3f} " \
                f"tok/s {record['tokens_per_s']:,.0f}"
        if self.bar is not None:
            self.bar.set_postfix_str(short, refresh=False)
            self.bar.update(1)
        elif self.lines:
            done = step - self.start
            eta = (time.time() - self.t0) / max(done, 1) * (self.total - step)
            print(f"[{self.name}] step {step}/{self.total} {short} eta {_hms(eta)}", flush=True)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
        if self.tb is not None:
            self.tb.close()
        self.file.close()


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
