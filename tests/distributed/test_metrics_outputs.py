"""What a tiny run leaves besides metrics.jsonl: the recipe's numbers on the console, PNG plots in
run.dir/plots/ (and `tulu-plot` on the run dir), a W&B run written offline, RL rollout samples in
samples.jsonl; an asked-for TensorBoard or W&B that is not installed stops the run at start-up."""

import json

import pytest

from tests import rank_pool
from tests.conftest import WORKERS, run_cli, train

PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["model=tiny", "runtime.device=cpu", "train.export_hf=false", "train.max_steps=2"]


@pytest.mark.fast
def test_sft_run_prints_the_token_loss_plots_and_logs_to_wandb_offline(tmp_path, data_cache):
    run, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    wandb_dir.mkdir()
    proc = train(["recipe=sft", *TINY, f"run.dir={run}", f"data.cache_dir={data_cache}", "metrics.progress=true",
                  "metrics.wandb=true", "metrics.wandb_project=tests", "metrics.plots=true"],
                 env={"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"})
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[sft] step ")]
    assert len(steps) == 2 and all("loss/token " in line and "tok/s" in line for line in steps), proc.stdout
    pngs = sorted((run / "plots").glob("*.png"))
    assert {"loss.png", "throughput.png", "lr.png"} <= {p.name for p in pngs}
    assert all(p.read_bytes()[:8] == PNG for p in pngs)
    offline = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), list(wandb_dir.rglob("*"))
    assert (run / "wandb_run_id").read_text().strip() in offline[0].name  # a resume continues it
    # tulu-plot redraws them from the run dir
    out = run_cli("tulu_mcore.cli.plot", run, "--out", tmp_path / "again", check=True)
    assert sorted(p.name for p in (tmp_path / "again").glob("*.png")) == [p.name for p in pngs], out.stdout


@pytest.mark.fast
def test_grpo_run_writes_rollout_samples_and_shows_reward_and_verified_rate(tmp_path, data_cache):
    run = tmp_path / "run"
    proc = train(["recipe=rlvr_grpo", *TINY, f"run.dir={run}", f"data.cache_dir={data_cache}",
                  "metrics.progress=true", "rlvr.max_new_tokens=4", "train.global_batch_size=2",
                  "rlvr.samples_per_prompt=2", "metrics.samples_every=1", "metrics.samples_per_step=2",
                  "metrics.plots=true"])
    steps = [line for line in proc.stdout.splitlines() if line.startswith("[grpo] step ")]
    assert len(steps) == 2 and all(f"{k} " in line for k in ("reward", "verified", "kl", "len")
                                   for line in steps), proc.stdout
    samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [1, 1, 2, 2]
    for s in samples:
        assert {"prompt", "response", "dataset", "ground_truth", "verified", "score"} <= set(s)
        assert s["prompt"] and s["ground_truth"] and isinstance(s["verified"], bool)
    assert (run / "plots" / "verified_rate.png").read_bytes()[:8] == PNG


@pytest.mark.parametrize("package", ["tensorboard", "wandb"])
def test_a_missing_metrics_package_stops_the_run_before_any_work(tmp_path, package):
    # model.init and data.train do not exist: the package is checked before either is looked at
    proc = rank_pool.run(str(WORKERS / "without_package.py"),
                         [package, "recipe=sft", *TINY, f"run.dir={tmp_path / 'run'}", f"metrics.{package}=true",
                          f"model.init={tmp_path / 'no-model'}", f"data.train={tmp_path / 'no-data.jsonl'}"], 1)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"pip install 'tulu-mcore[{package}]'" in proc.stderr and "no-model" not in proc.stderr, proc.stderr
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("recipe,name,console,plot", [
    ("dpo", "dpo", ("loss", "acc", "margin"), "accuracy.png"),
    ("rm", "rm", ("loss", "acc", "margin"), "accuracy.png"),
    ("rlvr_ppo", "ppo", ("reward", "verified", "kl", "len"), "verified_rate.png"),
])
def test_every_recipe_logs_to_wandb_offline_and_writes_its_plots(tmp_path, data_cache, recipe, name, console, plot):
    """The rest of the recipes (SFT and GRPO above): the recipe's console numbers, a W&B offline run, the
    plots; PPO's rollout samples."""
    run, wandb_dir = tmp_path / "run", tmp_path / "wandb"
    wandb_dir.mkdir()
    extra = (["rlvr.max_new_tokens=4", "train.global_batch_size=2", "rlvr.samples_per_prompt=1",
              "metrics.samples_every=1", "metrics.samples_per_step=2"] if recipe == "rlvr_ppo"
             else ["train.global_batch_size=4", "train.seq_length=256"])
    proc = train([f"recipe={recipe}", *TINY, f"run.dir={run}", f"data.cache_dir={data_cache}", "metrics.progress=true",
                  "metrics.wandb=true", "metrics.wandb_project=tests", "metrics.plots=true", *extra],
                 env={"WANDB_MODE": "offline", "WANDB_DIR": str(wandb_dir), "WANDB_SILENT": "true"})
    steps = [line for line in proc.stdout.splitlines() if line.startswith(f"[{name}] step ")]
    assert len(steps) == 2 and all(f"{k} " in line for k in console for line in steps), proc.stdout
    offline = list((wandb_dir / "wandb").glob("offline-run-*"))
    assert len(offline) == 1 and list(offline[0].glob("*.wandb")), list(wandb_dir.rglob("*"))
    pngs = {p.name: p for p in (run / "plots").glob("*.png")}
    assert {"loss.png", plot} <= set(pngs) and all(p.read_bytes()[:8] == PNG for p in pngs.values()), sorted(pngs)
    if recipe == "rlvr_ppo":
        samples = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
        assert [s["step"] for s in samples] == [1, 1, 2, 2] and all(s["prompt"] and "score" in s for s in samples)
    else:
        assert not (run / "samples.jsonl").exists()
