"""What the config-driven commands (tulu-train, tulu-launch, tulu-plan) share: their arguments are
Hydra-style KEY=VALUE / GROUP=OPTION overrides, plus `--help`, `--config-dir DIR` and the command's own
flags."""

from __future__ import annotations

from tulu_mcore.errors import UserError

NO_RECIPE = "recipe=none: choose a recipe to train: recipe=sft, recipe=dpo, recipe=rm or recipe=rlvr_grpo"

CONFIG_DIR = "--config-dir"
CONFIG_DIR_HELP = f"""\
  {CONFIG_DIR} DIR               your own GROUP/OPTION.yaml files (e.g. DIR/experiment/my_run.yaml for
                                 experiment=my_run), searched before the built-in conf/; repeatable"""


def parse(argv: list[str], prog: str, usage, flags: tuple[str, ...] = ()) -> tuple[list[str], set[str]] | None:
    """(overrides, the `flags` given), or None after printing `usage` (a string, or a function making
    it) for -h/--help; any other option is refused. `--config-dir DIR` (or `--config-dir=DIR`) stays
    among the overrides as `--config-dir=<DIR made absolute>`, which compose() reads (and tulu-launch
    hands on to the ranks' tulu-train)."""
    if any(a in ("-h", "--help") for a in argv):
        text = usage() if callable(usage) else usage
        print(text if CONFIG_DIR in text else text.rstrip("\n") + "\n\noptions:\n" + CONFIG_DIR_HELP)
        return None
    overrides, given, i = [], set(), 0
    while i < len(argv):
        a = argv[i]
        if a in flags:
            given.add(a)
        elif a == CONFIG_DIR or a.startswith(CONFIG_DIR + "="):
            if a == CONFIG_DIR:
                if i + 1 == len(argv):
                    raise UserError(f"{CONFIG_DIR} needs a directory: {prog} {CONFIG_DIR} DIR ...")
                i += 1
                d = argv[i]
            else:
                d = a.split("=", 1)[1]
            from tulu_mcore.config.cmdline import checked_dirs

            overrides.append(f"{CONFIG_DIR}={checked_dirs([d])[0]}")
        elif a.startswith("-"):
            raise UserError(f"unknown option {a}: {prog} takes KEY=VALUE overrides (see --help)")
        else:
            overrides.append(a)
        i += 1
    return overrides, given
