"""Each step's console line (the progress bar's postfix, or one line per step in a log): the recipe's key
numbers, told apart by the record's keys."""

from __future__ import annotations

# (label, key, format) per recipe
SFT = [("loss/token", "token_mean_loss", ".4f")]  # the per-token loss, whatever loss.reduction sums
PREFERENCE = [("loss", "loss", ".4f"), ("acc", "accuracy", ".3f"), ("margin", "margin", ".3f")]  # DPO, RM
RL = [("reward", "reward_mean", ".3f"), ("verified", "verified_rate", ".3f"), ("kl", "kl", ".2e"),
      ("len", "response_length", ".1f")]  # GRPO, PPO
COMMON = [("lr", "lr", ".2e"), ("gnorm", "grad_norm", ".3f"), ("tok/s", "tokens_per_s", ",.0f")]


def fields(record: dict) -> list[tuple[str, str, str]]:
    if "verified_rate" in record:
        return RL
    if "accuracy" in record:
        return PREFERENCE
    if "token_mean_loss" in record:
        return SFT
    return [("loss", "loss", ".4f")]


def summary(record: dict) -> str:
    """'loss/token 2.3456 lr 1.00e-05 gnorm 0.812 tok/s 12,345' (SFT), 'loss .. acc .. margin ..' (DPO, RM),
    'reward .. verified .. kl .. len ..' (RL); a missing or empty value shows as '-'."""
    return " ".join(f"{label} {_fmt(record.get(key), spec)}" for label, key, spec in fields(record) + COMMON)


def _fmt(value, spec: str) -> str:
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return "-"
    return format(value, spec)
