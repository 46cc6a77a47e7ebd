"""launchers/slurm/: the checked-in batch script of every golden experiment equals what tulu-launch
renders now (launchers/render.py, from any directory and interpreter), and holds no path of the
machine that rendered it."""

import difflib
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.fast

_spec = importlib.util.spec_from_file_location("launchers_render", ROOT / "launchers" / "render.py")
render = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(render)

# absolute paths a portable script may hold: devices, and the placeholder an admin replaces
ALLOWED_ABSOLUTE = {"/dev/null", "/dev/urandom", render.VLLM_PYTHON}


def test_one_file_per_golden_experiment():
    files = sorted(p.stem for p in render.OUT.glob("*.sbatch"))
    assert render.EXPERIMENTS and files == render.EXPERIMENTS, (
        f"launchers/slurm/ holds {files}, the experiments are {render.EXPERIMENTS}: re-render with "
        f"`{render.COMMAND}`")


@pytest.mark.parametrize("experiment", render.EXPERIMENTS)
def test_checked_in_script_is_current(experiment, tmp_path, monkeypatch):
    # rendered elsewhere, by another interpreter: a portable script does not change
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "executable", "/elsewhere/bin/python3")
    path = render.OUT / f"{experiment}.sbatch"
    want = render.render(experiment)
    got = path.read_text() if path.is_file() else ""
    if got != want:
        diff = "".join(list(difflib.unified_diff(got.splitlines(True), want.splitlines(True), str(path),
                                                 "rendered now"))[:60])
        pytest.fail(f"{path.relative_to(ROOT)} is stale: re-render with `{render.COMMAND}`\n{diff}")


def test_scripts_hold_no_machine_specific_path():
    here = {str(ROOT), os.path.realpath(ROOT), sys.executable, sys.prefix, str(Path.home())}
    for path in sorted(render.OUT.glob("*.sbatch")):
        text = path.read_text()
        for p in here:
            assert p not in text, f"{path.relative_to(ROOT)} names {p!r}, a path of this machine"
        absolute = set(re.findall(r"""(?:^|[\s=>'"(,:])(/[\w.\-/]+)""", text, re.MULTILINE)) - ALLOWED_ABSOLUTE
        assert not absolute, f"{path.relative_to(ROOT)} holds absolute paths {sorted(absolute)}"
        assert 'cd "$SLURM_SUBMIT_DIR"\n' in text, path
        assert "    python -m tulu_mcore.cli.train \\\n" in text, f"{path}: the trainers should run `python`"
        assert re.search(r"^#SBATCH --output=runs/\w+/logs/slurm-%j\.out$", text, re.MULTILINE), path
    rl = render.OUT / "tulu3_8b_rlvr_ppo.sbatch"  # the engine step names the checkout's files relatively
    assert (f"env PYTHONPATH=tulu_mcore/rollout/vllm_side {render.VLLM_PYTHON} "
            "tulu_mcore/rollout/vllm_side/server.py --model runs/tulu3_8b_rlvr_ppo/engine/model") in rl.read_text()


def test_check_mode_names_a_stale_file(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(render, "OUT", tmp_path / "launchers" / "slurm")
    render.OUT.mkdir(parents=True)
    for name in render.EXPERIMENTS[:1]:
        (render.OUT / f"{name}.sbatch").write_text("#!/bin/bash\n# edited by hand\n")
    monkeypatch.setattr(render, "EXPERIMENTS", render.EXPERIMENTS[:1])
    assert render.main(["--check"]) == 1
    out = capsys.readouterr().out
    assert f"stale: launchers/slurm/{render.EXPERIMENTS[0]}.sbatch" in out and render.COMMAND in out
    assert render.main([]) == 0 and render.main(["--check"]) == 0
