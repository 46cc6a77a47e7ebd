"""GRPO end to end through `tulu-train recipe=rlvr_grpo` at TP2: rollouts from the megatron engine,
verifier rewards, reference log-probs, a step; the engine's log-probs agree with the trainer's."""

from tests.conftest import metrics, train


def test_grpo_runs_at_tp2(sft_hf, tmp_path):
    run = tmp_path / "run"
    train(["recipe=rlvr_grpo", f"model.init={sft_hf}", f"run.dir={run}", "runtime.device=cpu",
           "metrics.progress=false", "train.max_steps=2", "train.global_batch_size=4", "rlvr.samples_per_prompt=4",
           "rlvr.max_new_tokens=16", "parallel.tp=2", "train.export_hf=false"], nproc=2)
    m = metrics(run)
    assert [x["step"] for x in m] == [1, 2]
    for x in m:
        assert x["responses"] == 16 and 0 <= x["verified_rate"] <= 1 and x["kl"] >= 0
        assert x["logprob_abs_diff"] <= 1e-3  # engine vs trainer on the sampled tokens
        assert x["weight_version"] == x["step"]
    assert m[0]["kl"] < 1e-6  # the policy starts as the reference
