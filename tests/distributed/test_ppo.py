"""PPO (recipe=rlvr_ppo) end to end: from the demo's DPO model with a value model initialised from a
reward model trained on the demo pairs, the reward rises and the KL stays bounded; resuming mid-run
restores policy, value model, both optimizers, the data cursor and the step."""

import shutil

from tests.conftest import builtin_rows, metrics, train

COMMON = ["recipe=rlvr_ppo", "runtime.device=cpu", "metrics.progress=false", "train.export_hf=false"]


def test_ppo_from_the_demo_raises_the_reward(demo_runs, tmp_path):
    rm = tmp_path / "rm"
    train(["recipe=rm", f"model.init={demo_runs / 'sft'}", f"run.dir={rm}", "runtime.device=cpu",
           "metrics.progress=false", "train.max_steps=16", "train.export_hf=false"], nproc=2)
    run = tmp_path / "ppo"
    # the demo's arithmetic and constraint prompts (its first 256; the response-format ones after them are
    # mostly solved by the DPO model already)
    prompts = builtin_rows(tmp_path / "prompts.jsonl", "builtin:rlvr-demo", 256)
    proc = train([*COMMON, f"model.init={demo_runs / 'dpo'}", f"rlvr.value_init={rm}", f"run.dir={run}",
                  "train.max_steps=32", "train.global_batch_size=16", f"data.train={prompts}"], nproc=2)
    assert f"value model from rlvr.value_init={rm}" in proc.stdout
    m = metrics(run)
    assert [x["step"] for x in m] == list(range(1, 33))
    q = len(m) // 4
    first, last = (sum(x["reward_mean"] for x in part) / q for part in (m[:q], m[-q:]))
    # the reward: 10 per verified response, -10 for one that ran out of tokens (measured here: 2.38 -> 3.52)
    assert last > first + 0.5, (first, last)
    assert all(x["kl"] < 5 for x in m) and m[0]["kl"] < 1e-6  # starts at the reference, stays near it
    assert m[-1]["value_mse"] < m[0]["value_mse"]  # the value model learns the returns
    assert all(x["logprob_abs_diff"] <= 1e-3 for x in m)  # engine vs trainer, on-policy


def test_ppo_resume_restores_policy_value_and_optimizers(sft_hf, tmp_path):
    run = tmp_path / "run"
    args = [*COMMON, f"model.init={sft_hf}", f"run.dir={run}", "train.max_steps=4", "train.save_interval=2",
            "train.global_batch_size=4", "rlvr.samples_per_prompt=2", "rlvr.max_new_tokens=16", "rlvr.ppo_epochs=2",
            "parallel.tp=2"]
    train(args, nproc=2)
    straight = {m["step"]: m for m in metrics(run)}
    for root in (run / "checkpoints", run / "value" / "checkpoints"):
        assert (root / "step_00000002").is_dir() and (root / "step_00000004").is_dir()
        shutil.rmtree(root / "step_00000004")
        (root / "latest").write_text("step_00000002\n")
    proc = train(args, nproc=2)
    assert "resumed from" in proc.stdout
    resumed = {m["step"]: m for m in metrics(run)}
    for step in (3, 4):
        a, b = resumed[step], straight[step]
        assert a["response_length"] == b["response_length"] and a["reward_mean"] == b["reward_mean"]
        for key in ("loss", "value_loss", "value_mse", "kl"):
            assert abs(a[key] - b[key]) <= 1e-6 + 1e-5 * abs(b[key]), (step, key, a[key], b[key])

    # a policy checkpoint whose value model is gone: refused, naming what is missing
    shutil.rmtree(run / "value" / "checkpoints" / "step_00000004")
    proc = train([a.replace("max_steps=4", "max_steps=6") for a in args], nproc=2, check=False)
    assert proc.returncode != 0 and "has no value model beside it" in proc.stderr
