"""Never reach a time limit unsaved: ``run.time_limit`` (seconds, ``MM:SS``, ``HH:MM:SS`` or
``D-HH:MM:SS``, counted from the process's start; under Slurm, when unset, the job's own end time) makes
the run save and stop once the next step and a save would no longer fit, judged from the measured step
and save times (as Megatron's ``--exit-duration-in-mins`` and NeMo's ``max_time``)."""

from __future__ import annotations

import os
import subprocess
import time

from tulu_mcore.config.durations import parse_duration

MARGIN_S = 5.0  # the exit itself (the next step and a save are counted apart)


def slurm_end_time() -> float | None:
    """The running Slurm job's end (epoch seconds), None outside a job or when Slurm does not say."""
    if "SLURM_JOB_END_TIME" in os.environ:
        return float(os.environ["SLURM_JOB_END_TIME"])
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        return None
    try:  # older Slurm: ask it
        out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%e"], capture_output=True, text=True, timeout=10)
        stamp = out.stdout.strip()
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S")) if out.returncode == 0 and stamp else None
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None


class Deadline:
    def __init__(self, time_limit, process_start: float):
        self.end = process_start + parse_duration(time_limit) if time_limit is not None else slurm_end_time()
        self.source = "run.time_limit" if time_limit is not None else "the Slurm job's time limit"
        self.save_s = 0.0  # the longest save seen

    def saved(self, seconds: float) -> None:
        self.save_s = max(self.save_s, seconds)

    def too_close(self, rest_s: float, step_s: float | None = None) -> bool:
        """Whether `rest_s` more seconds of work (the next step, as long as the last) and a save may not
        finish before the end; before the first save is timed, a save is taken to last a step
        (`step_s`, default `rest_s`)."""
        save_s = max(self.save_s, rest_s if step_s is None else step_s)
        return self.end is not None and time.time() + rest_s + save_s + MARGIN_S > self.end

    def left(self) -> float:
        return self.end - time.time() if self.end is not None else float("inf")
