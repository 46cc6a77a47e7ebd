"""GRPO end to end through `tulu-train recipe=rlvr_grpo` at TP2: rollouts from the megatron engine,
verifier rewards, reference log-probs, a step; the engine's log-probs agree with the trainer's (at a
sampling temperature too: the trainer divides its logits by it); the release's non-stop penalty; π_old
as the release takes it (the trainer's log-probs before the step's first update)."""

import json

import pytest

from tests.conftest import builtin_rows, metrics, train


@pytest.mark.fast
def test_grpo_runs_at_tp2(sft_hf, tmp_path):
    run = tmp_path / "run"
    held = builtin_rows(tmp_path / "held.jsonl", "builtin:rlvr-demo", 6)
    train(["recipe=rlvr_grpo", f"model.init={sft_hf}", f"run.dir={run}", "runtime.device=cpu",
           "metrics.progress=false", "train.max_steps=2", "train.global_batch_size=4", "rlvr.samples_per_prompt=4",
           "rlvr.max_new_tokens=16", "parallel.tp=2", "train.export_hf=false", "rlvr.temperature=0.7",
           "rlvr.loss_aggregation=group_token_mean", "rlvr.loss_group_size=2", f"eval.data={held}",
           "eval.every_steps=1", "eval.max_new_tokens=4"], nproc=2)
    m = metrics(run)
    assert [x["step"] for x in m] == [1, 2]
    # held-out evaluation (eval.data): greedy pass@1 per dataset through the engine and the verifiers
    datasets = {json.loads(line)["dataset"].lower() for line in held.read_text().splitlines()}
    for x in m:
        assert x["eval/prompts"] == 6 and 0 <= x["eval/pass_at_1"] <= 1 and x["eval/response_length"] <= 4
        assert {k.removeprefix("eval/pass_at_1_") for k in x if k.startswith("eval/pass_at_1_")} == datasets
        assert 0 <= x["eval/truncation_rate"] <= 1 and x["eval_s"] > 0
    for x in m:
        assert x["responses"] == 16 and 0 <= x["verified_rate"] <= 1 and x["kl"] >= 0
        assert x["verifier_timeouts"] == 0 and x["verifier_errors"] == 0  # counted, none here
        # engine vs trainer on the sampled tokens, both at temperature 0.7 (undivided logits differ by ~0.1)
        assert x["logprob_abs_diff"] <= 1e-3
        assert x["weight_version"] == x["step"] - 1  # on-policy: the weights before this step's update
    assert m[0]["kl"] < 1e-6  # the policy starts as the reference


def _stop_during_generation(args: list[str]) -> str:
    """tulu-train `args` on 2 fresh ranks, SIGUSR1 to the second once the run says it resumed (before the
    step's generation ends); its stdout."""
    import os
    import signal
    import subprocess

    import psutil

    from tulu_mcore.runtime.launch import torchrun_cmd

    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.Popen(torchrun_cmd("tulu_mcore.cli.train", args + ["metrics.plots=false"], 2),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if "resumed from" in line:
            workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "python" in c.name()]
            workers[-1].send_signal(signal.SIGUSR1)
            break
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-4000:]
    return "".join(lines) + out


def test_grpo_resume_continues_exactly(sft_hf, tmp_path):
    """Resume from the step-2 checkpoint of a 4-step run: the same prompts, rollouts (sampling seeded
    by step) and losses as the uninterrupted run; the reference is rebuilt from model.init. A first
    resume is stopped by a signal during step 3's generation: it stops there, before training, with the
    step-2 checkpoint as it was, and the next resume trains steps 3 and 4 as the uninterrupted run did."""
    import shutil

    run = tmp_path / "run"
    args = ["recipe=rlvr_grpo", f"model.init={sft_hf}", f"run.dir={run}", "runtime.device=cpu",
            "metrics.progress=false", "train.max_steps=4", "train.save_interval=2", "train.global_batch_size=4",
            "rlvr.samples_per_prompt=4", "rlvr.max_new_tokens=24", "train.export_hf=false",
            "rlvr.non_stop_penalty=true", "rlvr.penalty_reward_value=-10.0"]  # a learning signal in most groups
    train(args, nproc=2)
    straight = {m["step"]: m for m in metrics(run)}
    shutil.rmtree(run / "checkpoints" / "step_00000004")
    (run / "checkpoints" / "latest").write_text("step_00000002\n")
    stopped = _stop_during_generation(args)
    assert "stopping on a signal on another rank (stopped during step 3's generation): checkpoint saved after step 2" in stopped, \
        stopped[-3000:]
    assert [m["step"] for m in metrics(run)] == [1, 2]  # nothing logged for step 3
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == ["step_00000002"]
    proc = train(args, nproc=2)
    assert "resumed from" in proc.stdout
    resumed = {m["step"]: m for m in metrics(run)}
    for step in (3, 4):
        a, b = resumed[step], straight[step]
        assert a["response_length"] == b["response_length"] and a["verified_rate"] == b["verified_rate"]
        assert abs(a["loss"] - b["loss"]) <= 1e-6 + 1e-5 * abs(b["loss"]), (step, a["loss"], b["loss"])
        assert abs(a["kl"] - b["kl"]) <= 1e-7 + 1e-5 * b["kl"], (step, a["kl"], b["kl"])
    assert straight[4]["kl"] > 0  # the policy moved: the resumed steps compare something


def test_grpo_minibatches_update_between_parts(sft_hf, tmp_path):
    """rlvr.minibatches=2: two optimizer steps per batch of rollouts, each packed apart; the second part
    meets a policy already moved away from the reference (kl > 0), unlike a single step from it."""
    common = ["recipe=rlvr_grpo", f"model.init={sft_hf}", "runtime.device=cpu", "metrics.progress=false",
              "train.max_steps=1", "train.global_batch_size=16", "rlvr.samples_per_prompt=4", "rlvr.max_new_tokens=16",
              "train.export_hf=false", "optim.lr=1e-2"]
    one, two = tmp_path / "one", tmp_path / "two"
    train([*common, f"run.dir={one}"])
    train([*common, f"run.dir={two}", "rlvr.minibatches=2"])
    [a], [b] = metrics(one), metrics(two)
    assert a["responses"] == b["responses"] == 64 and a["verified_rate"] == b["verified_rate"]  # same rollouts
    assert 0 < a["verified_rate"] < 1  # some groups have a learning signal
    assert b["microbatches"] >= 2  # each part packed into rows of its own
    assert a["kl"] < 1e-6 < b["kl"] and a["clip_fraction"] == 0.0 < b["clip_fraction"]
    assert b["logprob_abs_diff"] <= 1e-3  # measured before the step's first update
    # π_old = the trainer before the step's first update: the ratio is exactly 1 on the first mini-batch,
    # and on the second it compares the moved policy with the one before the update
    assert b["ratio_dev_first"] == 0.0 < b["ratio_dev"]
    # rlvr.pi_old=engine: the engine's sampling log-probs, so the first mini-batch's ratio is not exactly 1
    engine = tmp_path / "engine"
    train([*common, f"run.dir={engine}", "rlvr.minibatches=2", "rlvr.pi_old=engine"])
    [c] = metrics(engine)
    assert 0.0 < c["ratio_dev_first"] <= 1e-3 and c["verified_rate"] == b["verified_rate"]
    # rlvr.loss_aggregation=sequence_mean through megatron's normaliser: on the first step (ratio 1, the
    # policy is the reference) the loss is -mean over sequences of A, and A sums to 0 within each group
    # (with the penalty, a group's ended and truncated responses differ in score and in length, so that
    # the token mean is not 0)
    longer = [*common, "rlvr.max_new_tokens=48", "rlvr.non_stop_penalty=true", "rlvr.penalty_reward_value=-10.0",
              "train.global_batch_size=8"]
    seq, tok = tmp_path / "seq", tmp_path / "tok"
    train([*longer, f"run.dir={seq}", "rlvr.loss_aggregation=sequence_mean"])
    train([*longer, f"run.dir={tok}"])
    [d], [e] = metrics(seq), metrics(tok)
    assert 0 < d["no_eos_rate"] < 1 and d["response_length"] == e["response_length"], (d, e)
    assert abs(d["loss"]) < 1e-6 < abs(e["loss"]), (d["loss"], e["loss"])


def test_non_stop_penalty_replaces_the_score_of_a_truncated_response(tmp_path):
    """Every response cut at 2 tokens, every one verified (the released checker's placeholder bug passes
    any text in tulu3_compat mode): without the penalty each scores 10; with the release's
    non_stop_penalty each scores penalty_reward_value, so reward_mean is exactly that."""
    import json

    data = tmp_path / "always_verified.jsonl"
    row = {"messages": [{"role": "user", "content": "Write a template."}], "dataset": "ifeval",
           "ground_truth": json.dumps({"func_name": "validate_placeholders", "N": 1})}
    data.write_text((json.dumps(row) + "\n") * 4)
    common = ["recipe=rlvr_grpo", "model=tiny", "train.max_steps=2", "rlvr.max_new_tokens=2", f"data.train={data}",
              "rlvr.tulu3_compat=true", "runtime.device=cpu", "metrics.progress=false", "train.global_batch_size=2",
              "rlvr.samples_per_prompt=2", "train.export_hf=false"]
    for extra, want in [([], 10.0), (["rlvr.non_stop_penalty=true", "rlvr.penalty_reward_value=0.0"], 0.0),
                        (["rlvr.non_stop_penalty=true", "rlvr.penalty_reward_value=-10.0"], -10.0)]:
        run = tmp_path / f"run{want}"
        train([*common, *extra, f"run.dir={run}"])
        m = metrics(run)
        assert [x["step"] for x in m] == [1, 2]
        for x in m:
            assert x["no_eos_rate"] == 1.0 and x["verified_rate"] == 1.0 and x["reward_mean"] == want, (extra, x)
