"""The megatron rollout engine against the trainer (TP1 and TP2): greedy tokens equal the trainer's
own greedy decoding, sampled tokens' log-probs equal the trainer's teacher-forced log-probs (mean |Δ|
≤ 1e-3 in fp32), before and after an optimizer step."""

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
