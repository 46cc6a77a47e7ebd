"""GPU tier (runs only where CUDA is visible): parity with transformers on the device, training steps of
the tiny model with the local spec, the packed-row fast path (no host syncs; varlen vs the document loop),
compiled kernels vs eager, and the Transformer Engine spec (bf16, FP8) against the local spec."""

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


def test_packed_rows_run_without_host_syncs_and_match_the_document_loop(tiny_ckpt, tmp_path):
    out = tmp_path / "packed.json"
    run_worker("gpu_packed.py", [tiny_ckpt["untied"], out], nproc=1)
    got = read_json(out)
    assert got["varlen_supported"], got  # torch's varlen flash attention serves bf16 packed rows
    assert got["sync_free"], got  # no device-to-host read in the model's forward and backward
    assert got["max_token_ce_diff"] < 0.05 * max(1.0, got["mean_token_ce"]), got  # bf16 kernels, same math
    assert got["grad_rel_diff"] < 0.02, got


@pytest.mark.parametrize("mode", ["compiled"])
def test_compiled_kernels_match_eager(mode):
    import torch
    from megatron.core.models.common.embeddings import rope_utils

    from tulu_mcore.models import kernels
    from tulu_mcore.models.norm import rms_norm
    from tulu_mcore.models.packed_rope import rope_thd

    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(300, 2048, device="cuda", generator=g).bfloat16()
    w = torch.randn(2048, device="cuda", generator=g).bfloat16()
    cu = torch.tensor([0, 100, 250, 300], device="cuda", dtype=torch.int32)
    t = torch.randn(300, 8, 64, device="cuda", generator=g).bfloat16()
    freqs = torch.randn(512, 1, 1, 64, device="cuda", generator=g)
    kernels.configure("eager")
    want_norm, want_rope = rms_norm(x, w, 1e-5), rope_thd(t, cu, freqs)
    kernels.configure(mode)
    try:
        got_norm = kernels.pick(rms_norm, x)(x, w, 1e-5)
        got_rope = rope_thd(t, cu, freqs)
    finally:
        kernels.configure("auto")
    torch.testing.assert_close(got_norm, want_norm, rtol=1.6e-2, atol=1e-2)  # bf16: one rounding apart
    torch.testing.assert_close(got_rope, want_rope, rtol=1.6e-2, atol=1e-2)
    cp1 = type("G", (), {"size": lambda self: 1, "rank": lambda self: 0})()
    torch.testing.assert_close(got_rope, rope_utils._apply_rotary_pos_emb_thd(t, cu, freqs, cp_group=cp1),
                               rtol=1.6e-2, atol=1e-2)


TE_CASES = [("bf16", []), ("fp8_delayed", ["precision.fp8=hybrid", "precision.fp8_recipe=delayed"]),
            ("fp8_tensorwise", ["precision.fp8=hybrid", "precision.fp8_recipe=tensorwise"])]


GPU_STEPS = ["runtime.device=cuda", "precision=bf16", "train.global_batch_size=8", "train.seq_length=64",
             "optim.lr=3e-3"]


@pytest.fixture(scope="module")
def local_spec_bf16_steps(tiny_ckpt, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "steps.json"
    run_worker("train_steps.py", [tiny_ckpt["untied"], out, *GPU_STEPS, "model.attention=sdpa"], nproc=1)
    return read_json(out)["steps"]


@pytest.mark.parametrize("name,extra", TE_CASES, ids=[c[0] for c in TE_CASES])
def test_te_spec_tracks_the_local_spec(tiny_ckpt, tmp_path, local_spec_bf16_steps, name, extra):
    """The Transformer Engine spec (bf16; FP8 with delayed and tensorwise scaling) trains the same steps
    as the local spec: the first loss (same weights, same batch) and the curve within bf16/FP8 noise."""
    pytest.importorskip("transformer_engine.pytorch")
    out = tmp_path / "te.json"
    run_worker("train_steps.py", [tiny_ckpt["untied"], out, *GPU_STEPS, "model.attention=te", *extra], nproc=1)
    te = read_json(out)["steps"]
    tol = 0.02 if name == "bf16" else 0.05
    for got, want in zip(te, local_spec_bf16_steps):
        assert abs(got["loss"] - want["loss"]) <= tol * abs(want["loss"]), (name, te, local_spec_bf16_steps)
