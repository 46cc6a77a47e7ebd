"""Durations: run.time_limit (seconds, or Slurm's clock forms) and launcher.time (Slurm's format)."""

from __future__ import annotations

from tulu_mcore.errors import UserError


def parse_duration(text, key: str = "run.time_limit", *, slurm: bool = False) -> float:
    """Seconds of a duration: a number, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS. A bare number is
    seconds, or minutes with `slurm` (Slurm's --time reads "90" as 90 minutes)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        return float(text) * (60 if slurm else 1)
    s = str(text).strip()
    try:
        if not s or s.startswith("-"):
            raise ValueError
        days, dash, rest = s.partition("-") if "-" in s else ("", "", s)
        parts = [float(p) for p in rest.split(":")]
        if len(parts) > 3 or any(p < 0 for p in parts):
            raise ValueError
        if dash:  # D-HH[:MM[:SS]]
            h, m, sec = (parts + [0.0, 0.0])[:3]
            return float(days) * 86400 + h * 3600 + m * 60 + sec
        if len(parts) == 1:
            return parts[0] * (60 if slurm else 1)
        return sum(p * 60 ** i for i, p in enumerate(reversed(parts)))  # MM:SS or HH:MM:SS
    except ValueError:
        raise UserError(f"{key}={text!r}: give seconds, MM:SS, HH:MM:SS or D-HH:MM:SS") from None
