"""tulu-plan: exact parameter counts (against transformers' own model on the meta device), FLOPs per
token against the published Megatron anchors, the golden experiments fit their stated GPU counts, and
misfits / impossible layouts are refused with what to change; a bare question (no experiment=) is planned
with realistic values for what it leaves out, each one stated, and the user's own keys win."""

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


def plan_main(capsys, *args):
    """tulu-plan in this process: (exit code, stdout lines, stderr)."""
    from tulu_mcore.cli.plan import main

    try:
        main(list(args))
        rc = 0
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out.strip().splitlines(), out.err


STATED_GPUS = {"8b": 8, "70b": 64, "405b": 256}  # the Tülu runs' H100 counts (SFT, DPO, RM)
EXPERIMENTS = sorted(p.stem for p in (ROOT / "conf" / "experiment").glob("tulu3*_*.yaml"))


def test_every_experiment_is_planned():
    assert {"tulu3_8b_sft", "tulu3_70b_sft", "tulu3_405b_sft", "tulu3_8b_dpo", "tulu3_70b_dpo", "tulu3_405b_dpo",
            "tulu3_8b_rm", "tulu3_8b_rlvr_ppo", "tulu3_70b_rlvr_ppo", "tulu3_405b_rlvr_ppo",
            "tulu31_8b_rlvr_grpo"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_golden_experiments_fit_their_gpus(capsys, experiment):
    import re

    text = (ROOT / "conf" / "experiment" / f"{experiment}.yaml").read_text()
    gpus = int(re.search(r"Sized for (\d+) H100", text).group(1))  # the count the comment states
    if "rlvr" not in experiment:  # RL adds the engine's GPUs and, for PPO, a value model
        assert gpus == STATED_GPUS[experiment.split("_")[1]]
    else:  # the trainer / engine split is stated, and adds up
        assert re.search(r"the trainer on \d+", text) and "vLLM engine" in text
    rc, lines, err = plan_main(capsys, f"experiment={experiment}")  # tulu-plan, in this process
    assert rc == 0, "\n".join(lines) + err
    *_, params, last = lines
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


# --- a bare question: no experiment=, realistic values for what it leaves out, each one stated

def assumed(lines):
    return {line.split()[1].split("=")[0]: line for line in lines if line.startswith("assumed: ")}


@pytest.mark.parametrize("preset,published,gpus,batch,tp", [("llama3_1_8b", 8_030_261_248, 8, 128, 2),
                                                            ("llama3_1_70b", 70_553_706_496, 64, 128, 8),
                                                            ("llama3_1_405b", 405_853_388_800, 256, 256, 8)])
def test_a_bare_model_question_is_answered(capsys, preset, published, gpus, batch, tp):
    rc, lines, err = plan_main(capsys, f"model={preset}")
    assert rc == 0, err
    assert lines[-2] == f"params_total={published}"
    assert lines[-1].startswith("fits=true ") and lines[-1].endswith(f" gpus={gpus}")
    said = assumed(lines)  # the defaults it assumed, named with where they came from
    assert "recipe=sft" in said["recipe"] and "precision=bf16" in said["precision"]
    assert "train.seq_length=4096" in said["train.seq_length"]
    assert f"train.global_batch_size={batch}" in said["train.global_batch_size"]
    assert f"plan.gpus={gpus}" in said["plan.gpus"] and f"parallel.tp={tp} " in said["parallel.tp"]
    assert all("set " in line and "experiment=tulu3_" in line for k, line in said.items() if k != "recipe")


def test_a_bare_question_plans_as_its_golden_experiment():
    # model=M recipe=R is planned exactly as experiment=<M's R run>: not the CPU defaults (fp32, 256 tokens)
    from tulu_mcore.plan import golden_experiments, plan_for, question, report

    golden = golden_experiments()
    assert golden[("llama3_1_8b", "sft")] == "tulu3_8b_sft" and len(golden) == len(EXPERIMENTS)
    for (model, recipe), name in golden.items():
        cfg, lines = question([f"model={model}", f"recipe={recipe}"])
        explicit, none = question([f"experiment={name}"])
        assert lines and none == []
        assert report(plan_for(cfg), cfg) == report(plan_for(explicit), explicit), name
    cfg, _ = question(["model=llama3_1_8b", "recipe=sft"])
    t = cfg.train
    assert (cfg.precision.params_dtype, t.seq_length, t.global_batch_size) == ("bf16", 4096, 128)


def test_the_users_own_keys_win(capsys):
    from tulu_mcore.plan import plan_for, question

    base = plan_for(question(["model=llama3_1_8b", "recipe=sft"])[0])
    cfg, lines = question(["model=llama3_1_8b", "recipe=sft", "precision=fp32"])
    fp32 = plan_for(cfg)
    assert cfg.precision.params_dtype == "fp32" and "precision" not in assumed(lines)
    assert fp32.memory["weights"] == pytest.approx(2 * base.memory["weights"])
    cfg, lines = question(["model=llama3_1_8b", "recipe=sft", "train.seq_length=8192"])
    long = plan_for(cfg)
    # the experiment's data.max_seq_len (4096) belongs to its row length: not lent beside the user's own
    assert cfg.train.seq_length == 8192 and cfg.data.max_seq_len is None
    assert not {"train.seq_length", "data.max_seq_len"} & set(assumed(lines))
    assert long.memory["activations"] == pytest.approx(2 * base.memory["activations"])
    rc, lines, _ = plan_main(capsys, "model=llama3_1_8b", "launcher.nodes=2")  # a GPU count too
    assert rc == 0 and "plan.gpus" not in assumed(lines) and lines[-1].endswith(" gpus=16")


def test_an_impossible_layout_of_a_bare_question_is_refused(capsys):
    rc, lines, err = plan_main(capsys, "model=llama3_1_8b", "parallel.tp=3")
    assert rc == 2 and "error: world size 8 is not divisible by TP*PP*CP" in err
    # the lines name what the layout was checked on
    assert "parallel.tp" not in assumed(lines) and "plan.gpus=8" in assumed(lines)["plan.gpus"]
    rc, lines, err = plan_main(capsys, "model=llama3_1_8b", "train.global_batch_size=126")  # the user's: kept
    assert rc == 2 and "train.global_batch_size=126 is not divisible by micro_batch_size*dp = 1*4" in err


def test_an_assumed_layout_gives_way_to_the_users_gpu_count(capsys):
    # the 405B layout needs multiples of 64 GPUs: on 8 the question is planned (and does not fit), not refused
    rc, lines, err = plan_main(capsys, "model=llama3_1_405b", "plan.gpus=8")
    assert rc == 1, err
    layout = assumed(lines)["parallel"]
    assert "parallel=dp (the default; experiment=tulu3_405b_sft has TP x PP x CP = 64, which" in layout
    assert lines[-2] == "params_total=405853388800" and lines[-1].startswith("fits=false ")


def test_a_model_without_an_experiment_gets_a_batch_its_layout_divides(capsys):
    rc, lines, err = plan_main(capsys, "model=llama3_2_1b", "plan.gpus=12")
    assert rc == 0, err
    said = assumed(lines)
    batch = said["train.global_batch_size"]
    assert "train.global_batch_size=132" in batch
    assert "128 rounded up to a multiple of micro_batch_size x DP = 12" in batch
    assert "precision=bf16" in said["precision"] and "train.seq_length=4096" in said["train.seq_length"]
    assert any(line.startswith("layout: 12 GPUs = TP1 x PP1 x CP1 x DP12; 11 micro-batch") for line in lines)
    rc, lines, _ = plan_main(capsys, "model=llama3_2_1b")  # 128 on the default 8 GPUs: kept
    assert rc == 0 and "train.global_batch_size=128 (" in assumed(lines)["train.global_batch_size"]


@pytest.mark.parametrize("args", [("model=llama3_1_405b",), ("model=llama3_2_1b", "plan.gpus=12"),
                                  ("model=llama3_1_70b", "recipe=rlvr_grpo")])
def test_the_question_in_full_is_the_same_plan(capsys, args):
    import shlex

    rc, lines, _ = plan_main(capsys, *args)
    full = next(line for line in lines if line.startswith("the question in full"))
    rc2, lines2, _ = plan_main(capsys, *shlex.split(full.split(": tulu-plan ", 1)[1]))
    assert rc2 == rc and not assumed(lines2) and lines2 == lines[lines.index(full) + 1:]


def test_an_experiment_assumes_nothing(capsys):
    rc, lines, _ = plan_main(capsys, "experiment=tulu3_8b_sft", "train.seq_length=2048",
                             "data.max_seq_len=2048")
    assert rc == 0 and lines[0].startswith("model llama3_1_8b:") and not assumed(lines)


def test_the_usage_examples_exit_as_they_say(capsys):
    import re

    from tulu_mcore.cli.plan import USAGE

    examples = re.findall(r"^ +tulu-plan (.+?) +# exit (\d)", USAGE, re.MULTILINE)
    assert {code for _, code in examples} == {"0", "1", "2"}
    for args, code in examples:
        assert plan_main(capsys, *args.split())[0] == int(code), args


def test_a_bare_question_from_the_command_line():
    proc = plan_cli("model=llama3_1_405b")
    assert proc.returncode == 0, proc.stderr
    params, fits = proc.stdout.strip().splitlines()[-2:]
    assert params == "params_total=405853388800"
    assert fits.startswith("fits=true ") and fits.endswith(" gpus=256")


def test_rl_experiments_break_the_step_into_generation_training_and_refit(capsys):
    rc, lines, err = plan_main(capsys, "experiment=tulu3_405b_rlvr_ppo")
    refit = next(line for line in lines if line.startswith("refit_bytes="))
    got = dict(kv.split("=") for kv in refit.split())
    params = 405_853_388_800
    assert int(got["refit_bytes"]) == params * 2  # bf16 weights: what every engine GPU receives
    assert float(got["refit_s"]) == pytest.approx(params * 2 / (400e9 / 8), abs=1e-3)  # 400 Gb/s: ~16.2 s
    step = next(line for line in lines if line.startswith("RL step: "))
    # 1024 decode steps, each reading a TP16 shard of the weights plus the KV cache of 1856 sequences
    # (batch 1856 x 1 sample on one TP16 engine) at 1,536 tokens on average: 126 layers x 8 KV heads x 128 x K,V x 2 B
    kv = 1856 * (2048 / 2 + 1024 / 2) * 2 * 126 * 8 * 128 * 2
    gen = 1024 * (params * 2 + kv) / 16 / 3.35e12
    assert f"generation >= {gen:.1f} s" in step and f"refit {params * 2 / 50e9:.2f} s" in step, step
    # a slower link: a proportionally slower refit; a megatron engine refits in place (no line)
    _, lines, _ = plan_main(capsys, "experiment=tulu3_405b_rlvr_ppo", "plan.link_gbps=100")
    refit = next(line for line in lines if line.startswith("refit_bytes="))
    assert float(refit.split("refit_s=")[1]) == pytest.approx(params * 2 / (100e9 / 8), abs=1e-3)
    _, lines, _ = plan_main(capsys, "experiment=tulu31_8b_rlvr_grpo", "rlvr.engine=megatron")
    assert not any(line.startswith(("refit_bytes=", "RL step: ")) for line in lines)
