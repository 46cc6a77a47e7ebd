"""What the config-driven commands (tulu-train, tulu-launch, tulu-plan) share: their arguments are
Hydra-style KEY=VALUE / GROUP=OPTION overrides, plus `--help` and the command's own flags."""

from __future__ import annotations

from tulu_mcore.errors import UserError

NO_RECIPE = "recipe=none: choose a recipe to train: recipe=sft, recipe=dpo, recipe=rm or recipe=rlvr_grpo"


def parse(argv: list[str], prog: str, usage, flags: tuple[str, ...] = ()) -> tuple[list[str], set[str]] | None:
    """(overrides, the `flags` given), or None after printing `usage` (a string, or a function making
    it) for -h/--help; any other option is refused."""
    if any(a in ("-h", "--help") for a in argv):
        print(usage() if callable(usage) else usage)
        return None
    overrides = [a for a in argv if a not in flags]
    bad = [a for a in overrides if a.startswith("-")]
    if bad:
        raise UserError(f"unknown option {bad[0]}: {prog} takes KEY=VALUE overrides (see --help)")
    return overrides, {a for a in argv if a in flags}
