"""Config composition and the one validation step: each impossible layout -> one line naming the
constraint and the fix."""

import pytest

from tulu_mcore.config.compose import compose, model_preset
from tulu_mcore.config.validate import validate
from tulu_mcore.errors import ConfigError, UserError


def problems(overrides, world, **kw):
    cfg = compose(overrides)
    with pytest.raises(ConfigError) as e:
        validate(cfg, world, device="cpu", have_te=False, **kw)
    return e.value.problems


def test_default_composes_and_validates():
    cfg = compose([])
    assert cfg.model.name == "tiny" and cfg.parallel.tp == 1 and cfg.precision.params_dtype == "fp32"
    lay = validate(cfg, 1, device="cpu", have_te=False)
    assert (lay.dp, lay.segments, lay.num_microbatches) == (1, (4,), 4)


@pytest.mark.parametrize(
    "layout,world,dp,segments",
    [("tp2", 2, 1, (4,)), ("tp2_sp", 4, 2, (4,)), ("pp2", 2, 1, (2, 2)), ("pp2_vpp2", 2, 1, (1, 1, 1, 1)),
     ("cp2", 2, 1, (4,)), ("dp", 2, 2, (4,))],
)
def test_layout_groups_validate(layout, world, dp, segments):
    lay = validate(compose([f"parallel={layout}"]), world, device="cpu", have_te=False)
    assert lay.dp == dp and lay.segments == segments


# Published parameter counts of the Llama models (model cards / safetensors metadata).
@pytest.mark.parametrize(
    "preset,params",
    [("llama3_2_1b", 1_235_814_400), ("llama3_2_3b", 3_212_749_824), ("llama3_1_8b", 8_030_261_248),
     ("llama3_1_70b", 70_553_706_496), ("llama3_1_405b", 405_853_388_800)],
)
def test_presets_match_published_sizes(preset, params):
    arch = model_preset(preset).arch
    assert arch.num_params == params
    validate(compose([f"model={preset}", "train.global_batch_size=8"]), 8, device="cpu", have_te=False)


@pytest.mark.parametrize(
    "overrides,world,needles",
    [
        # world size vs TP*PP*CP
        (["parallel.tp=2"], 3, ["world size 3", "TP*PP*CP", "launch a multiple of 2"]),
        # query groups vs TP (heads divide: 4 % 4 == 0; KV heads 2 do not)
        (["parallel.tp=4"], 4, ["num_key_value_heads=2", "choose tp from [1, 2]"]),
        # vocabulary vs TP
        (["parallel.tp=2", "model.arch.vocab_size=511"], 2, ["vocab_size=511", "pad the vocabulary"]),
        # layers vs PP*VPP
        (["parallel.pp=3"], 3, ["num_hidden_layers=4", "pp*vpp", "pipeline_layout"]),
        (["parallel.pp=2", "parallel.vpp=3", "train.global_batch_size=6"], 2,
         ["num_hidden_layers=4", "pp*vpp = 2*3"]),
        (["parallel.pp=2", "parallel.pipeline_layout=[3,2]"], 2, ["pipeline_layout=[3, 2]", "summing to"]),
        # sequence vs 2*CP
        (["parallel=cp2", "train.seq_length=30"], 2, ["seq_length=30", "2*cp = 4", "multiple of 4"]),
        (["parallel=tp2_sp", "train.seq_length=33"], 2, ["seq_length=33", "sequence parallel"]),
        # switches that need another dimension
        (["parallel.sp=true"], 1, ["parallel.sp=true needs parallel.tp > 1"]),
        (["parallel.vpp=2"], 1, ["parallel.vpp=2 needs parallel.pp > 1"]),
        # batch
        (["train.global_batch_size=3"], 2, ["global_batch_size=3", "micro_batch_size*dp"]),
        (["parallel=pp2_vpp2", "train.global_batch_size=3"], 2, ["interleaved", "multiple of 2"]),
        # FP8 without Transformer Engine is refused, never silently ignored
        (["precision=fp8_delayed"], 1, ["precision.fp8 needs Transformer Engine", "precision=bf16"]),
        (["precision.fp8_param=true"], 1, ["fp8_param=true needs precision.fp8"]),
        (["model.attention=te"], 1, ["model.attention=te needs Transformer Engine"]),
        (["model.attention=flex"], 1, ["flex cannot train on CPU", "model.attention=sdpa"]),
        # training knobs
        (["recipe=sft", "train.micro_batch_size=2", "train.global_batch_size=4"], 1,
         ["packed micro-batches are one row", "train.micro_batch_size=1"]),
        (["recipe=sft", "data.max_seq_len=300"], 1, ["data.max_seq_len=300", "train.seq_length=256"]),
        (["loss.reduction=mean"], 1, ["loss.reduction='mean'", "token_mean"]),
        (["optim.warmup_ratio=1.5"], 1, ["warmup_ratio=1.5"]),
        (["train.max_steps=0"], 1, ["train.max_steps=0 must be >= 1"]),
    ],
)
def test_each_impossible_layout_is_one_line(overrides, world, needles):
    lines = problems(overrides, world)
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "\n" not in lines[0]


def test_several_violations_one_line_each():
    # TP=3 breaks heads (4), query groups (2) and vocabulary (512) at once; all are reported together
    lines = problems(["parallel.tp=3"], 3)
    assert len(lines) == 3
    assert any("num_attention_heads=4" in x for x in lines)
    assert any("num_key_value_heads=2" in x for x in lines)
    assert any("vocab_size=512" in x for x in lines)
    assert all("choose tp from" in x for x in lines)


def test_fp8_on_cpu_with_te_present_is_refused():
    cfg = compose(["precision=fp8_tensorwise"])
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        validate(cfg, 1, device="cpu", have_te=True)
    cfg = compose(["precision=fp8_tensorwise", "model.attention=sdpa"])
    with pytest.raises(ConfigError, match="model.attention=sdpa"):
        validate(cfg, 1, device="cuda", have_te=True)
    validate(compose(["precision=fp8_tensorwise"]), 1, device="cuda", have_te=True)


def test_non_training_jobs_skip_batch_checks():
    cfg = compose(["parallel=cp2", "train.seq_length=30", "train.global_batch_size=3"])
    lay = validate(cfg, 2, device="cpu", have_te=False, training=False)
    assert lay.cp == 2


def test_type_errors_name_the_key():
    with pytest.raises(UserError, match="parallel.tp"):
        compose(["parallel.tp=two"])
    with pytest.raises(UserError, match="model/nonexistent"):
        compose(["model=nonexistent"])
    with pytest.raises(UserError, match="unknown model preset"):
        model_preset("nonexistent")


@pytest.mark.parametrize("experiment,gpus,lr,batch", [("tulu3_8b_sft", 8, 5e-6, 128), ("tulu3_70b_sft", 64, 2e-6, 128),
                                                      ("tulu3_405b_sft", 256, 2e-6, 256)])
def test_golden_sft_experiments(experiment, gpus, lr, batch):
    cfg = compose([f"experiment={experiment}"])
    # the Tülu 3 numbers
    assert (cfg.optim.lr, cfg.train.global_batch_size, cfg.train.epochs) == (lr, batch, 2)
    assert (cfg.train.seq_length, cfg.optim.lr_schedule, cfg.optim.warmup_ratio) == (4096, "linear", 0.03)
    assert (cfg.loss.reduction, cfg.optim.weight_decay, cfg.precision.params_dtype) == ("sum", 0.0, "bf16")
    assert cfg.data.train == "allenai/tulu-3-sft-mixture" and cfg.model.init.startswith("meta-llama/Llama-3.1-")
    # the layout each is sized for is valid on its stated GPU count
    lay = validate(cfg, gpus, device="cuda", have_te=True)
    assert lay.world_size == gpus and lay.dp >= 1


@pytest.mark.parametrize("experiment,gpus,lr,batch,warmup", [
    ("tulu3_8b_dpo", 8, 5e-7, 128, 0.1), ("tulu3_70b_dpo", 64, 2e-7, 128, 0.1),
    ("tulu3_405b_dpo", 256, 2e-7, 256, 0.1), ("tulu3_8b_rm", 8, 3e-6, 256, 0.0)])
def test_golden_preference_experiments(experiment, gpus, lr, batch, warmup):
    cfg = compose([f"experiment={experiment}"])
    assert cfg.recipe.name == ("rm" if experiment.endswith("rm") else "dpo")
    assert (cfg.optim.lr, cfg.train.global_batch_size, cfg.train.epochs) == (lr, batch, 1)
    assert (cfg.data.max_seq_len, cfg.optim.lr_schedule, cfg.optim.warmup_ratio) == (2048, "linear", warmup)
    assert cfg.optim.weight_decay == 0.0 and cfg.train.seq_length >= 2 * cfg.data.max_seq_len
    assert "preference-mixture" in cfg.data.train and "Tulu-3" in cfg.model.init and cfg.model.init.endswith("-SFT")
    if cfg.recipe.name == "dpo":
        assert (cfg.dpo.loss_type, cfg.dpo.beta, cfg.dpo.label_smoothing) == ("dpo_norm", 5.0, 0.0)
    lay = validate(cfg, gpus, device="cuda", have_te=True)
    assert lay.world_size == gpus


def test_dpo_options_are_checked():
    cfg = compose(["recipe=dpo", "dpo.loss_type=kto", "dpo.beta=0", "dpo.gamma=1", "data.max_seq_len=200"])
    with pytest.raises(UserError) as e:
        validate(cfg, 1, device="cpu")
    msg = str(e.value)
    for needle in ("dpo.loss_type='kto'", "dpo.beta=0", "dpo.gamma=1", "at least 2 x data.max_seq_len"):
        assert needle in msg, (needle, msg)


# the released settings (open-instruct's RL scripts and the documented commands), per golden RL experiment:
# (penalty_reward_value, loss group = --per_device_train_batch_size, LR horizon in steps, stop step)
RELEASED_RL = {"tulu31_8b_rlvr_grpo": (0.0, 2, None, None), "tulu3_8b_rlvr_ppo": (-10.0, 2, 10_000_000 // 224, 446),
               "tulu3_70b_rlvr_ppo": (-10.0, 1, 400_000 // 640, 625),
               "tulu3_405b_rlvr_ppo": (-10.0, 1, 400_000 // 1856, 161)}


@pytest.mark.parametrize("experiment", sorted(RELEASED_RL))
def test_golden_rl_experiments_print_the_released_settings(experiment, capsys):
    import yaml

    from tulu_mcore.cli.train import main

    main([f"experiment={experiment}", "--print-config"])
    cfg = yaml.safe_load(capsys.readouterr().out)
    r, o = cfg["rlvr"], cfg["optim"]
    penalty, group, horizon, stop = RELEASED_RL[experiment]
    assert (r["non_stop_penalty"], r["penalty_reward_value"], r["tulu3_compat"]) == (True, penalty, True)
    assert (r["loss_aggregation"], r["loss_group_size"], r["pi_old"]) == ("group_token_mean", group, "trainer")
    assert (r["async_generation"], r["engine"], r["max_prompt_tokens"], r["temperature"]) == (True, "vllm", 2048, 1.0)
    # torch.optim.AdamW(policy.parameters()) without a weight-decay argument: 0.01 on every parameter
    assert (o["weight_decay"], o["decay_norms_and_biases"]) == (0.01, True)
    assert (o["schedule_steps"], cfg["train"]["max_steps"]) == (horizon, stop)
    if cfg["recipe"]["name"] == "rlvr_ppo":
        assert r["score_position"] == "after_eos" and r["ppo_epochs"] == 4
    else:
        assert o["lr_schedule"] == "constant" and r["minibatches"] == 2


# --- the command line refuses mistakes: unknown options and keys, a group beside an experiment, --config-dir

@pytest.mark.parametrize("group,typo,meant", [
    ("experiment", "tulu3_8b_sfft", "tulu3_8b_sft"), ("parallel", "tp3", "tp2"), ("model", "llama3_1_8bb", "llama3_1_8b"),
    ("precision", "bf61", "bf16"), ("recipe", "sfft", "sft"), ("launcher", "slurmm", "slurm")])
def test_an_unknown_group_option_names_the_choices(group, typo, meant):
    with pytest.raises(ConfigError) as e:
        compose([f"{group}={typo}"])
    (line,) = e.value.problems
    assert line.startswith(f"unknown {group}={typo} (no {group}/{typo}.yaml in conf/)"), line
    assert f"did you mean {group}={meant}?" in line and "choose one of " in line and meant in line.split("choose")[1]


@pytest.mark.parametrize("main", ["train", "plan", "launch"])
def test_the_clis_refuse_an_unknown_experiment_in_one_line(main, capsys):
    import importlib

    with pytest.raises(SystemExit) as e:
        importlib.import_module(f"tulu_mcore.cli.{main}").main(["experiment=tulu3_8b_sfft", "recipe=sft"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: unknown experiment=tulu3_8b_sfft"), err
    assert "did you mean experiment=tulu3_8b_sft?" in err[0] and "Traceback" not in err[0]


def test_a_group_beside_an_experiment_wins_for_its_section():
    from omegaconf import OmegaConf

    from tulu_mcore.config.compose import CONF_DIR

    alone = compose(["experiment=tulu3_8b_sft"])
    assert (alone.parallel.tp, alone.parallel.sp) == (2, True)  # the experiment's own layout
    cfg = compose(["experiment=tulu3_8b_sft", "parallel=dp"])
    assert vars(cfg.parallel) == dict(OmegaConf.load(CONF_DIR / "parallel" / "dp.yaml"))  # tp=1, pp=1, ...
    # the rest is the experiment's
    assert (cfg.model.name, cfg.model.init, cfg.optim.lr, cfg.train.global_batch_size, cfg.precision.name) == (
        alone.model.name, alone.model.init, alone.optim.lr, alone.train.global_batch_size, alone.precision.name)
    # a list of the experiment's (pipeline_layout) goes too; a launcher keeps the experiment's node count
    cfg = compose(["experiment=tulu3_405b_sft", "parallel=tp2", "launcher=slurm"])
    assert (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.vpp, cfg.parallel.pipeline_layout) == (2, 1, 1, None)
    assert (cfg.launcher.name, cfg.launcher.nodes) == ("slurm", 32)


@pytest.mark.parametrize("overrides", [
    ["experiment=tulu3_8b_sft", "parallel=dp", "parallel.tp=4", "parallel.sp=true", "train.global_batch_size=64"],
    ["parallel.tp=4", "parallel.sp=true", "train.global_batch_size=64", "parallel=dp", "experiment=tulu3_8b_sft"]])
def test_key_overrides_win_over_groups_and_experiments(overrides):
    cfg = compose(overrides)
    assert (cfg.parallel.tp, cfg.parallel.sp, cfg.parallel.pp, cfg.train.global_batch_size) == (4, True, 1, 64)
    assert cfg.optim.lr == 5e-6


def test_an_experiments_own_choice_on_the_command_line_changes_nothing():
    same = compose(["experiment=tulu3_8b_sft", "model=llama3_1_8b", "recipe=sft", "precision=bf16"])
    assert same == compose(["experiment=tulu3_8b_sft"])
    assert compose(["experiment=tulu3_8b_sft", "precision=fp32"]).precision.params_dtype == "fp32"


def test_another_model_or_recipe_beside_an_experiment_is_refused_unless_said():
    with pytest.raises(ConfigError) as e:  # the experiment's weights are an 8B's: never dropped silently
        compose(["experiment=tulu3_8b_sft", "model=llama3_2_1b"])
    (line,) = e.value.problems
    assert "model.init=meta-llama/Llama-3.1-8B" in line and "model.init=PATH|HUB_NAME" in line
    cfg = compose(["experiment=tulu3_8b_sft", "model=llama3_2_1b", "model.init=/ckpt/llama-1b"])
    assert (cfg.model.name, cfg.model.init, cfg.model.arch.hidden_size, cfg.optim.lr) == (
        "llama3_2_1b", "/ckpt/llama-1b", 2048, 5e-6)
    with pytest.raises(ConfigError, match="recipe=dpo does not go with experiment=tulu3_8b_sft.*tulu3_8b_dpo"):
        compose(["experiment=tulu3_8b_sft", "recipe=dpo"])


@pytest.mark.parametrize("override,meant", [
    ("train.global_batch_sise=8", "train.global_batch_size"), ("+train.global_batch_sise=8", "train.global_batch_size"),
    ("optim.lrr=1", "optim.lr"), ("lr=1", "optim.lr"), ("train.lr=1", "optim.lr"),
    ("model.arch.rope_scaling.factr=2", "model.arch.rope_scaling.factor"), ("experimnet=tulu3_8b_sft", "experiment=tulu3_8b_sft")])
def test_an_unknown_key_names_the_key_meant(override, meant):
    with pytest.raises(ConfigError) as e:
        compose([override])
    (line,) = e.value.problems
    key = override.lstrip("+").split("=")[0]
    assert line == f"unknown key {key}: did you mean {meant}?" or line.startswith(f"unknown key {key}: did you mean {meant}? ")
    assert "+" not in line


def test_every_mistake_is_one_line_and_free_keys_pass():
    with pytest.raises(ConfigError) as e:
        compose(["optim.lrr=1", "parallel=tp3", "train.seq_length.x=1"])
    assert len(e.value.problems) == 3 and len(str(e.value).splitlines()) == 3
    assert "train.seq_length is a value, not a section" in e.value.problems[2]
    cfg = compose(["+launcher.env.NCCL_IB_HCA=mlx5", "data.train=[a.jsonl,b.jsonl]", "hydra.verbose=false"])
    assert cfg.launcher.env == {"NCCL_IB_HCA": "mlx5"} and cfg.data.train == ["a.jsonl", "b.jsonl"]


def test_a_user_config_dir_comes_before_conf(tmp_path, capsys):
    from tulu_mcore.cli.launch import train_overrides
    from tulu_mcore.cli.overrides import parse
    from tulu_mcore.cli.train import main

    (tmp_path / "experiment").mkdir()
    (tmp_path / "experiment" / "my_exp.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /recipe: sft\n  - _self_\n"
        "parallel: {tp: 2}\ntrain: {global_batch_size: 8}\nrun: {dir: runs/my_exp}\n")
    with pytest.raises(ConfigError, match="unknown experiment=my_exp"):
        compose(["experiment=my_exp"])
    cfg = compose(["experiment=my_exp"], config_dirs=[tmp_path])
    assert (cfg.recipe.name, cfg.parallel.tp, cfg.train.global_batch_size, cfg.run.dir) == ("sft", 2, 8, "runs/my_exp")
    assert compose(["experiment=my_exp", "parallel=dp"], config_dirs=[tmp_path]).parallel.tp == 1
    # the CLIs: --config-dir DIR travels with the overrides (made absolute; tulu-launch hands it to the ranks)
    overrides, _ = parse(["--config-dir", str(tmp_path), "experiment=my_exp"], "tulu-train", "")
    assert overrides == [f"--config-dir={tmp_path.resolve()}", "experiment=my_exp"]
    assert compose(overrides) == cfg
    assert overrides[0] in train_overrides(overrides, tmp_path / "run")
    main(["--config-dir", str(tmp_path), "experiment=my_exp", "--print-config"])
    assert "dir: runs/my_exp" in capsys.readouterr().out
    # searched first: an option of the same name as a built-in one is the user's
    (tmp_path / "parallel").mkdir()
    (tmp_path / "parallel" / "dp.yaml").write_text("tp: 2\n")
    assert compose(["parallel=dp"], config_dirs=[tmp_path]).parallel.tp == 2
    # a mistake in the user's file names the key meant; a missing directory is refused
    (tmp_path / "experiment" / "bad.yaml").write_text("# @package _global_\ntrain: {global_batch_sise: 8}\n")
    with pytest.raises(UserError, match="unknown key train.global_batch_sise: did you mean train.global_batch_size"):
        compose(["experiment=bad"], config_dirs=[tmp_path])
    with pytest.raises(UserError, match="--config-dir .*nowhere: no such directory"):
        compose([f"--config-dir={tmp_path / 'nowhere'}"])


@pytest.mark.parametrize("override,needle", [
    ("train.seq_length=-1", "train.seq_length=-1"), ("optim.lr=nan", "optim.lr=nan must be a finite number"),
    ("optim.lr=inf", "optim.lr=inf must be a finite number"), ("train.global_batch_size=0", "must be >= 1"),
    ("data.train=[{path:builtin:sft-demo,max_examples:-1}]", "max_examples=-1 must be a whole number >= 1")])
def test_impossible_numbers_are_refused(override, needle):
    with pytest.raises(UserError, match=None) as e:
        validate(compose(["recipe=sft", override]), 1, device="cpu")
    assert needle in str(e.value)


def test_a_run_dir_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UserError) as e:
        validate(compose(["recipe=sft", f"run.dir={f}"]), 1, device="cpu")
    assert "is a file, not a directory" in str(e.value)
