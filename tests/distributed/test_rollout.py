"""Rollout engines against the trainer: greedy tokens equal the trainer's own greedy decoding, sampled
tokens' log-probs equal the trainer's teacher-forced log-probs (mean |Δ| ≤ 1e-3 in fp32), initially and
after each of two optimizer steps and weight pushes. The megatron engine at TP1 and TP2; real vLLM
(the CPU build, its own environment) fed by a TP2 and by a PP2 trainer over each transport (collective,
memory, disk), every push verified, and the verification's own checks: a damaged tensor, wrong weights."""

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
@pytest.mark.parametrize("layout,transports", [("parallel.tp=2", "collective,collective,disk"),
                                               ("parallel.pp=2", "collective,memory,collective")])
def test_vllm_engine_agrees_with_trainer_and_every_push_is_verified(vllm_hf, vllm_python, vllm_engine, tmp_path,
                                                                    layout, transports):
    # the session's engine: the weights it serves are the ones this trainer pushes (the first push loads them)
    out = tmp_path / "agree.json"
    run_worker("rollout_agreement.py", [vllm_hf, out, transports, layout, "rlvr.engine=vllm", *vllm_engine["overrides"]],
               nproc=2, env=vllm_engine["env"])
    *phases, faults = json.loads(out.read_text())
    assert [p["version"] for p in phases] == [0, 1, 2]
    assert phases[1]["pushed_bytes"] > 0 and phases[2]["pushed_bytes"] == phases[1]["pushed_bytes"]
    for phase in [*phases, faults]:
        assert all(phase["greedy_equal"]), phase
        assert phase["tokens"] > 50 and phase["mean_abs"] <= 1e-3 and phase["max_abs"] <= 1e-2, phase
        # every push verified: the probe's gap is the engine-vs-trainer agreement, far under its bound
        assert phase["push_stats"]["weight_verify_s"] > 0 and phase["push_stats"]["weight_probe_gap"] <= 1e-3, phase
    # a tensor damaged in transit: the checksum names it, on both ranks; wrong values written after the load
    # (checksums pass): the probe stops the push, on both ranks; a clean push then agrees again (above)
    corrupt, overwrite = faults["errors"]["corrupt"], faults["errors"]["overwrite"]
    assert all(e and "tensor model.layers.1.mlp.down_proj.weight arrived corrupted" in e for e in corrupt), corrupt
    assert all(e and "log-probs of the probe sequences are not the trainer's" in e for e in overwrite), overwrite
    assert all("rerun the same command" in e for e in corrupt + overwrite)
    assert faults["version"] == 3 and faults["pushed_bytes"] == phases[1]["pushed_bytes"]
