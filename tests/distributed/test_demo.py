"""The main job, `tulu-demo` (the README's first command): SFT -> DPO -> RLVR on the built-in tiny
default; each stage does what it is for, and RL with verifiable rewards raises the verified rate."""

import json


def test_demo_pipeline_learns_at_every_stage(demo_runs):
    s = json.loads((demo_runs / "summary.json").read_text())
    assert s["export_check"]["ok"]
    assert s["sft"]["loss_last"] < 0.5 * s["sft"]["loss_first"]
    assert s["dpo"]["accuracy_last_quarter"] > s["dpo"]["accuracy_first_quarter"] + 0.2
    r = s["rlvr"]
    assert r["steps"] == 64
    # GRPO on the bundled verifiable prompts: the verified rate of the rollouts rises clearly
    assert r["verified_rate_last_quarter"] > r["verified_rate_first_quarter"] + 0.1, r
    assert 0 < r["kl_last"] < 10
    out = (demo_runs / "stdout.txt").read_text()
    assert "RLVR (GRPO): 64 steps" in out and "the exported RLVR model, asked" in out
