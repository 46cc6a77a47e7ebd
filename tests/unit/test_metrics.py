"""What a run shows and leaves besides metrics.jsonl, without training: each recipe's console line, the
start-up check of the optional TensorBoard / W&B packages, the PNG plots and `tulu-plot`, the choice of
rollout samples."""

import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from tulu_mcore.errors import UserError
from tulu_mcore.metrics.console import summary
from tulu_mcore.metrics.sinks import require_packages

PNG = b"\x89PNG\r\n\x1a\n"
COMMON = {"grad_norm": 0.5, "lr": 1e-5, "tokens_per_s": 1234.0, "step_time_s": 1.0, "tflops_per_gpu": 0.1,
          "mfu": None}
RECORDS = {
    "sft": {"loss": 91.25, "token_mean_loss": 2.3456, "trained_tokens": 40, **COMMON},
    "dpo": {"loss": 0.6931, "accuracy": 0.75, "margin": 0.125, "rewards_chosen": 0.1, "rewards_rejected": -0.025,
            **COMMON},
    "rm": {"loss": 0.7, "accuracy": 0.5, "margin": -0.25, "score_chosen": 0.1, "score_rejected": 0.35, **COMMON},
    "grpo": {"loss": 0.01, "reward_mean": 3.5, "verified_rate": 0.35, "verified_rate_gsm8k": 0.35,
             "response_length": 12.5, "kl": 1.5e-4, "clip_fraction": 0.0, **COMMON},
    "ppo": {"loss": 0.02, "value_loss": 0.3, "reward_mean": 1.0, "verified_rate": 0.1, "response_length": 7.0,
            "kl": 2e-3, "approx_kl": 1e-4, "value_grad_norm": 0.2, **COMMON},
}


@pytest.mark.parametrize("recipe, shown, hidden", [
    ("sft", ["loss/token 2.3456"], ["91.25"]),  # the per-token loss, not the summed one
    ("dpo", ["loss 0.6931", "acc 0.750", "margin 0.125"], []),
    ("rm", ["loss 0.7000", "acc 0.500", "margin -0.250"], []),
    ("grpo", ["reward 3.500", "verified 0.350", "kl 1.50e-04", "len 12.5"], []),
    ("ppo", ["reward 1.000", "verified 0.100", "kl 2.00e-03", "len 7.0"], []),
])
def test_console_line_shows_each_recipes_numbers(recipe, shown, hidden):
    line = summary(RECORDS[recipe])
    for text in shown + ["lr 1.00e-05", "gnorm 0.500", "tok/s 1,234"]:
        assert text in line, (text, line)
    for text in hidden:
        assert text not in line, line


def test_console_line_shows_a_missing_number_as_a_dash():
    assert "gnorm -" in summary({**RECORDS["dpo"], "grad_norm": None})


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
def test_an_asked_for_package_that_is_missing_is_one_error_naming_the_extra(monkeypatch, package):
    monkeypatch.setitem(sys.modules, package, None)  # as if not installed
    require_packages(SimpleNamespace(tensorboard=False, wandb=False))  # not asked for: fine
    with pytest.raises(UserError, match=rf"metrics\.{package}=true .*pip install 'tulu-mcore\[{package}\]'"):
        require_packages(SimpleNamespace(tensorboard=package == "tensorboard", wandb=package == "wandb"))


def test_both_missing_packages_in_one_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(UserError, match=r"tulu-mcore\[tensorboard,wandb\]"):
        require_packages(SimpleNamespace(tensorboard=True, wandb=True))


def write_records(run_dir, records):
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps({"step": i + 1, **r}) + "\n"
                                                   for i, r in enumerate(records)))


def test_plots_of_whatever_keys_the_records_hold(tmp_path):
    from tulu_mcore.metrics.plots import write_plots

    run = tmp_path / "grpo"
    write_records(run, [RECORDS["grpo"], {**RECORDS["grpo"], "reward_mean": 4.0}])
    written = write_plots(run)
    names = sorted(p.name for p in written)
    assert names == ["grad_norm.png", "kl.png", "loss.png", "lr.png", "response_length.png", "reward.png",
                     "throughput.png", "verified_rate.png"]
    assert all(p.parent == run / "plots" and p.read_bytes()[:8] == PNG for p in written)
    sft = tmp_path / "sft"
    write_records(sft, [RECORDS["sft"]])
    assert "reward.png" not in [p.name for p in write_plots(sft)]  # nothing to plot there


def test_tulu_plot_writes_pngs_of_a_run_dir(tmp_path, capsys):
    from tulu_mcore.cli.plot import main

    run = tmp_path / "dpo"
    write_records(run, [RECORDS["dpo"]] * 3)
    main([str(run), "--out", str(tmp_path / "out")])
    printed = capsys.readouterr().out.split()
    assert str(tmp_path / "out" / "accuracy.png") in printed
    assert all(open(p, "rb").read(8) == PNG for p in printed)
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "empty")])
    assert e.value.code == 2 and "no records" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "RUN_DIR/plots/" in capsys.readouterr().out


def test_rollout_samples_spread_over_the_prompts_of_rank_0():
    from tulu_mcore.metrics.samples import due, rollout_samples

    class Tok:
        def decode(self, ids, skip_special_tokens):
            return " ".join(map(str, ids))

    def traj(p, k):
        return SimpleNamespace(ids=np.array([p, p, 100 + k]), prompt_len=2, dataset="gsm8k", verified=k == 0,
                               score=10.0 * (k == 0), finished=True)

    prompts = [SimpleNamespace(ground_truth=f"gt{i}") for i in range(8)]
    data = SimpleNamespace(prompts=prompts, step_prompts=lambda step: (0, [6, 5, 4, 3] if step == 2 else []))
    rollouts = SimpleNamespace(data=data, tokenizer=Tok(), dp_rank=0, dp_size=2)
    batch = SimpleNamespace(trajectories=[traj(p, k) for p in (6, 4) for k in range(2)], samples_per_prompt=2)
    out = rollout_samples(3, batch, rollouts, 2)  # record step 3 = the loop's step 2; rank 0: prompts 6 and 4
    assert [(s["prompt"], s["response"], s["ground_truth"], s["verified"], s["score"]) for s in out] == \
        [("6 6", "100", "gt6", True, 10.0), ("4 4", "100", "gt4", True, 10.0)]
    assert [s for s in range(1, 25) if due(s, 10)] == [1, 11, 21] and not due(1, 0)
