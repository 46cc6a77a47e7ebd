"""Rollout engines against the trainer: greedy tokens equal the trainer's own greedy decoding, sampled
tokens' log-probs equal the trainer's teacher-forced log-probs (mean |Δ| ≤ 1e-3 in fp32), initially and
after each of two optimizer steps and weight pushes. The megatron engine at TP1 and TP2; real vLLM
(the CPU build, its own environment) fed by a TP2 trainer, once over the socket and once from disk."""

import json

import pytest

from tests.conftest import run_worker


@pytest.mark.parametrize("layout,nproc", [([], 1), (["parallel.tp=2"], 2)])
def test_megatron_engine_agrees_with_trainer(sft_hf, tmp_path, layout, nproc):
    out = tmp_path / "agree.json"
    run_worker("rollout_agreement.py", [sft_hf, out, *layout], nproc=nproc)
    for phase in json.loads(out.read_text()):
        assert all(phase["greedy_equal"]), phase
        assert phase["tokens"] > 50 and phase["mean_abs"] <= 1e-3 and phase["max_abs"] <= 1e-2, phase


@pytest.mark.vllm
def test_vllm_engine_agrees_with_tp2_trainer(vllm_hf, vllm_python, vllm_engine, tmp_path):
    # the session's engine: the weights it serves are the ones this trainer pushes
    out = tmp_path / "agree.json"
    run_worker("rollout_agreement.py", [vllm_hf, out, "parallel.tp=2", "rlvr.engine=vllm", *vllm_engine["overrides"]],
               nproc=2, env=vllm_engine["env"])
    phases = json.loads(out.read_text())
    assert [p["version"] for p in phases] == [0, 1, 2]
    assert phases[1]["pushed_bytes"] > 0 and phases[2]["pushed_bytes"] == phases[1]["pushed_bytes"]
    for phase in phases:
        assert all(phase["greedy_equal"]), phase
        assert phase["tokens"] > 50 and phase["mean_abs"] <= 1e-3 and phase["max_abs"] <= 1e-2, phase
