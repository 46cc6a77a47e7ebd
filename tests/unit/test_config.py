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
