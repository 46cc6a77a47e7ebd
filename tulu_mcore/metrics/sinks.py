"""Optional destinations of the per-step records: TensorBoard (``metrics.tensorboard``, the
``tulu-mcore[tensorboard]`` extra) and Weights & Biases (``metrics.wandb``, the ``tulu-mcore[wandb]``
extra; ``WANDB_MODE=offline`` writes the run locally, ``wandb sync`` uploads it later). Both are checked
at start-up (:func:`require_packages`), before data loading or model building."""

from __future__ import annotations

import importlib.util
import os
import secrets
from pathlib import Path

from tulu_mcore.errors import UserError
from tulu_mcore.metrics.records import is_number

WANDB_ID_FILE = "wandb_run_id"  # in run.dir: a resumed run continues the same W&B run


def require_packages(metrics) -> None:
    """One error naming the extra to install when `metrics` (the config's MetricsConfig) asks for a
    package that is not installed."""
    missing = [(key, package) for key, package in (("tensorboard", "tensorboard"), ("wandb", "wandb"))
               if getattr(metrics, key, False) and importlib.util.find_spec(package) is None]
    if missing:
        keys = " and ".join(f"metrics.{k}=true" for k, _ in missing)
        packages = " and ".join(p for _, p in missing)
        extras = ",".join(p for _, p in missing)
        plural = "s" if len(missing) > 1 else ""
        raise UserError(f"{keys} needs the {packages} package{plural}, which is not installed: "
                        f"pip install 'tulu-mcore[{extras}]' (or set {keys.replace('=true', '=false')})")


class TensorBoardSink:
    def __init__(self, run_dir: Path, name: str):
        from torch.utils.tensorboard import SummaryWriter

        self.name, self.writer = name, SummaryWriter(str(run_dir / "tensorboard"))

    def log(self, record: dict) -> None:
        for k, v in record.items():
            if k != "step" and is_number(v):
                self.writer.add_scalar(f"{self.name}/{k}", v, record["step"])

    def close(self) -> None:
        self.writer.close()


class WandbSink:
    """One W&B run per run.dir (its id kept in run.dir/wandb_run_id, so a resume continues it), the
    composed config as its config; files under $WANDB_DIR, else run.dir/wandb."""

    def __init__(self, run_dir: Path, name: str, config: dict, project: str | None, run_name: str | None):
        import wandb

        id_file = run_dir / WANDB_ID_FILE
        run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(6)
        id_file.write_text(run_id + "\n")
        self.name = name
        self.run = wandb.init(project=project or "tulu-mcore", name=run_name or run_dir.resolve().name,
                              id=run_id, resume="allow", config=config, job_type=name,
                              dir=os.environ.get("WANDB_DIR") or str(run_dir),
                              settings=wandb.Settings(console="off"))  # rank 0's stdout stays as it is

    def log(self, record: dict) -> None:
        self.run.log({f"{self.name}/{k}": v for k, v in record.items() if k != "step" and is_number(v)},
                     step=record["step"])

    def close(self) -> None:
        self.run.finish()
