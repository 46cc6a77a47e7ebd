"""The architecture contracts of pyproject.toml (import-linter): layers run one way, no import cycles
between sibling packages or modules, rewards/data/launch/plan stay independent of models and training,
and the ground floor is torch-free. A new cycle or a wrong-way import fails here, naming the import."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.fast


def test_import_contracts_hold():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    proc = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout
    kept = proc.stdout.count("KEPT")
    assert kept >= 5, proc.stdout  # every contract of pyproject.toml was checked


def test_the_ground_floor_imports_without_torch():
    # the architecture record, the layout, the config and the planner load in a process that has no
    # torch at all (tulu-plan and tulu-launch answer before any heavy import)
    code = ("import sys; sys.modules['torch'] = None; sys.modules['megatron'] = None\n"
            "from tulu_mcore.arch import Layout, LlamaArch\n"
            "from tulu_mcore.config.compose import compose\n"
            "from tulu_mcore.plan import plan_for\n"
            "from tulu_mcore.launch.slurm import render_sbatch\n"
            "cfg = compose(['model=llama3_1_8b'])\n"
            "print(cfg.model.arch.num_params)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "8030261248"
