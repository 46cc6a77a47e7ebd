"""GPU tier (runs only where CUDA is visible): parity with transformers on the device, and a training
step of the tiny model with the local spec."""

import re

import pytest

from tests.conftest import convert, read_json, run_worker

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_parity_on_gpu(tiny_hf, tiny_ckpt, dtype):
    proc = convert("verify", tiny_hf["untied"], tiny_ckpt["untied"], "--device", "cuda", "--dtype", dtype)
    assert "device=cuda" in proc.stdout
    diff = float(re.search(r"^max_abs_logit_diff=(\S+)$", proc.stdout, re.M).group(1))
    assert diff <= (1e-4 if dtype == "fp32" else 0.1), proc.stdout


def test_training_steps_on_gpu(tiny_ckpt, tmp_path):
    out = tmp_path / "gpu.json"
    run_worker("train_steps.py", [tiny_ckpt["untied"], out, "runtime.device=cuda", "train.global_batch_size=8",
                                  "train.seq_length=32", "optim.lr=3e-3"], nproc=1)
    steps = read_json(out)["steps"]
    assert steps[0]["loss"] > steps[1]["loss"] > steps[2]["loss"]
