"""Renders launchers/slurm/<experiment>.sbatch for every golden experiment (conf/experiment/*.yaml):
the batch script `tulu-launch experiment=<name> launcher=slurm` submits, rendered by tulu-launch's own
code in its portable form, so that the file holds no path of the machine that rendered it:

* the job works in the directory it was submitted from (a checkout of this repository);
* run.dir is the experiment's own, relative to that directory (runs/<name>);
* the trainers run `python` from the nodes' PATH (launcher.python);
* the RL experiments' vLLM engine runs /path/to/vllm-env/bin/python, a placeholder for the vLLM
  environment's interpreter on the nodes (rlvr.vllm.python), to be edited.

    python launchers/render.py           # rewrite the files (after a change to the configs or the renderer)
    python launchers/render.py --check   # exit 1 naming the stale files; writes nothing

tests/unit/test_launchers.py renders every experiment with the same function and fails on a stale file.
"""

from __future__ import annotations

import sys
from pathlib import Path

from tulu_mcore.cli.launch import render_slurm
from tulu_mcore.config.compose import CONF_DIR, compose

OUT = Path(__file__).resolve().parent / "slurm"
EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
COMMAND = "python launchers/render.py"
VLLM_PYTHON = "/path/to/vllm-env/bin/python"  # a placeholder: the admin names the real interpreter


def launch_args(experiment: str) -> list[str]:
    """The tulu-launch overrides the file of `experiment` is rendered with."""
    args = [f"experiment={experiment}", "launcher=slurm", "launcher.python=python"]
    cfg = compose(args)
    if cfg.recipe.name.startswith("rlvr_") and cfg.rlvr.engine == "vllm":
        args.append(f"rlvr.vllm.python={VLLM_PYTHON}")
    return args


def render(experiment: str) -> str:
    """The text of launchers/slurm/<experiment>.sbatch."""
    args = launch_args(experiment)
    script = render_slurm(compose(args), args, portable=True)
    shebang, rest = script.split("\n", 1)
    return "\n".join([
        shebang,
        f"# launchers/slurm/{experiment}.sbatch: rendered by `{COMMAND}`;",
        "# rerun it after a change to the configs. Submit from the checkout. What to edit, containers,",
        "# shared file systems, requeue: launchers/README.md",
        rest,
    ])


def stale_files() -> dict[Path, str | None]:
    """Every file that differs from its render (its new text), and files of removed experiments (None)."""
    out: dict[Path, str | None] = {}
    for name in EXPERIMENTS:
        path, text = OUT / f"{name}.sbatch", render(name)
        if not path.is_file() or path.read_text() != text:
            out[path] = text
    for path in sorted(OUT.glob("*.sbatch")):
        if path.stem not in EXPERIMENTS:
            out[path] = None
    return out


def main(argv: list[str]) -> int:
    if argv not in ([], ["--check"]):
        print(__doc__, file=sys.stderr)
        return 2
    stale = stale_files()
    if argv == ["--check"]:
        for path in stale:
            print(f"stale: {path.relative_to(OUT.parent.parent)}")
        if stale:
            print(f"re-render: {COMMAND}")
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for path, text in stale.items():
        if text is None:
            path.unlink()
            print(f"removed {path.relative_to(OUT.parent.parent)} (no such experiment)")
        else:
            path.write_text(text)
            print(f"wrote {path.relative_to(OUT.parent.parent)}")
    print(f"{len(EXPERIMENTS)} scripts, {len(stale)} changed")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
