"""tulu-plan: exact parameter counts (against transformers' own model on the meta device), FLOPs per
token against the published Megatron anchors, the golden experiments fit their stated GPU counts, and
misfits / impossible layouts are refused with what to change."""

import subprocess
import sys

import pytest
import torch

from tests.conftest import ROOT
from tulu_mcore.config.compose import compose, model_preset
from tulu_mcore.config.validate import validate
from tulu_mcore.metrics.flops import flops_per_token
from tulu_mcore.plan import estimate, stage_params


def hf_param_count(arch) -> int:
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**arch.to_hf_config()))
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("preset,published", [("llama3_1_8b", 8_030_261_248), ("llama3_1_70b", 70_553_706_496),
                                              ("llama3_1_405b", 405_853_388_800)])
def test_parameter_counts_are_exact(preset, published):
    cfg = compose([f"model={preset}", "recipe=sft"])
    lay = validate(cfg, 8, device="cuda", have_te=True, training=False)
    plan = estimate(cfg, lay)
    assert plan.params_total == published == hf_param_count(cfg.model.arch)


@pytest.mark.parametrize("parallel", [{"tp": 1, "pp": 1}, {"tp": 2, "pp": 2}, {"tp": 4, "pp": 4, "vpp": 2}])
def test_stage_params_add_up(parallel):
    cfg = compose(["model=llama3_1_8b", "recipe=sft", *[f"parallel.{k}={v}" for k, v in parallel.items()]])
    lay = validate(cfg, parallel["tp"] * parallel["pp"], device="cuda", have_te=True, training=False)
    per = stage_params(cfg.model.arch, lay)
    norms = 2 * cfg.model.arch.hidden_size * cfg.model.arch.num_hidden_layers + cfg.model.arch.hidden_size
    # every TP rank holds the norms whole: TP x (matrices / TP + norms) = total + (TP - 1) x norms
    assert sum(per) * lay.tp == cfg.model.arch.num_params + (lay.tp - 1) * norms


@pytest.mark.parametrize("preset,seq,gflops", [("llama3_1_8b", 8192, 51.5), ("llama3_1_8b", 4096, 48.2),
                                               ("llama3_1_70b", 8192, 449.2), ("llama3_1_405b", 8192, 2524)])
def test_flops_per_token_match_megatron_anchors(preset, seq, gflops):
    got = flops_per_token(model_preset(preset).arch, seq) / 1e9
    assert abs(got - gflops) <= 0.0015 * gflops, got


def plan_cli(*args):
    return subprocess.run([sys.executable, "-m", "tulu_mcore.cli.plan", *args], capture_output=True, text=True, cwd=ROOT)


STATED_GPUS = {"8b": 8, "70b": 64, "405b": 256}  # the Tülu runs' H100 counts (SFT, DPO, RM)
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("tulu3*_*.yaml"))


def test_every_experiment_is_planned():
    assert {"tulu3_8b_sft", "tulu3_70b_sft", "tulu3_405b_sft", "tulu3_8b_dpo", "tulu3_70b_dpo", "tulu3_405b_dpo",
            "tulu3_8b_rm", "tulu3_8b_rlvr_ppo", "tulu3_70b_rlvr_ppo", "tulu3_405b_rlvr_ppo",
            "tulu31_8b_rlvr_grpo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_golden_experiments_fit_their_gpus(experiment):
    import re

    text = (ROOT / "conf" / "experiment" / f"{experiment}.yaml").read_text()
    gpus = int(re.search(r"Sized for (\d+) H100", text).group(1))  # the count the comment states
    if "rlvr" not in experiment:  # RL adds the engine's GPUs and, for PPO, a value model
        assert gpus == STATED_GPUS[experiment.split("_")[1]]
    else:  # the trainer / engine split is stated, and adds up
        assert re.search(r"the trainer on \d+", text) and "vLLM engine" in text
    proc = plan_cli(f"experiment={experiment}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    *_, params, last = proc.stdout.strip().splitlines()
    assert params.startswith("params_total=") and int(params.split("=")[1]) > 7e9
    fits, peak, n = last.split()
    assert fits == "fits=true" and n == f"gpus={gpus}" and 20 < float(peak.split("=")[1]) < 80


def test_misfit_says_what_to_change():
    proc = plan_cli("experiment=tulu3_8b_sft", "parallel.tp=1", "parallel.sp=false", "train.recompute=none")
    assert proc.returncode == 1
    assert "to fit: activations" in proc.stdout and "train.recompute=full" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith("fits=false peak_gib=")


def test_impossible_layout_is_refused():
    proc = plan_cli("experiment=tulu3_8b_sft", "parallel.tp=3")
    assert proc.returncode == 2 and "error: world size 8 is not divisible by TP*PP*CP" in proc.stderr


def test_launch_refuses_a_misfit_before_submitting():
    proc = subprocess.run([sys.executable, "-m", "tulu_mcore.cli.launch", "experiment=tulu3_8b_sft", "parallel.tp=1",
                           "parallel.sp=false", "train.recompute=none", "launcher=slurm"],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "error: tulu-plan: this run needs" in proc.stderr and "submitted" not in proc.stdout
