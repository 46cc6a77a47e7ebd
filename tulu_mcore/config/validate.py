"""One validation step for a run: derive the sizes that follow from the config, reject what cannot run.

Every violated constraint is reported on one line that names the constraint and the fix, and all of
them are reported together, so that a user fixes a config in one pass rather than one error per launch.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

from omegaconf import OmegaConf

from tulu_mcore.arch import Layout, even_segments
from tulu_mcore.config.schema import (
    ADAM_IMPLS,
    ATTENTION_BACKENDS,
    DEVICES,
    DPO_LOSSES,
    DTYPES,
    ENGINES,
    FP8_FORMATS,
    FP8_RECIPES,
    KERNEL_MODES,
    LOSS_AGGREGATIONS,
    LR_SCHEDULES,
    ON_ERROR,
    PI_OLD,
    RECIPES,
    RECOMPUTE,
    REDUCTIONS,
    REFERENCES,
    SCORE_POSITIONS,
    WEIGHT_TRANSPORTS,
    RunConfig,
)
from tulu_mcore.errors import ConfigError


def have_transformer_engine() -> bool:
    return importlib.util.find_spec("transformer_engine") is not None


def _divisors(n: int, limit: int | None = None) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0 and (limit is None or d <= limit)]


def validate(
    cfg: RunConfig,
    world_size: int,
    *,
    device: str | None = None,
    have_te: bool | None = None,
    training: bool = True,
) -> Layout:
    """Check `cfg` for `world_size` ranks; return the derived layout or raise ConfigError.

    `device` is the resolved device ("cuda" or "cpu"); `have_te` whether Transformer Engine imports
    (default: what this machine has). `training=False` skips the `train` section (sequence length,
    batch sizes): conversion and verification choose their own.
    """
    if have_te is None:
        have_te = have_transformer_engine()
    p, a, prec = cfg.parallel, cfg.model.arch, cfg.precision
    errs: list[str] = []

    def err(msg: str) -> None:
        errs.append(msg)

    for name in ("tp", "pp", "vpp", "cp"):
        if getattr(p, name) < 1:
            err(f"parallel.{name}={getattr(p, name)} must be >= 1: set parallel.{name}=1 to disable it")
    if errs:
        raise ConfigError(errs)

    mp = p.tp * p.pp * p.cp
    if world_size % mp:
        err(
            f"world size {world_size} is not divisible by TP*PP*CP = {p.tp}*{p.pp}*{p.cp} = {mp}: "
            f"launch a multiple of {mp} ranks, or choose tp/pp/cp whose product divides {world_size}"
        )
    dp = max(world_size // mp, 1)

    # --- tensor parallel vs the model's shapes
    if a.num_attention_heads % p.tp:
        err(
            f"parallel.tp={p.tp} does not divide model.arch.num_attention_heads="
            f"{a.num_attention_heads}: choose tp from {_divisors(a.num_attention_heads)}"
        )
    if a.num_key_value_heads % p.tp:
        err(
            f"parallel.tp={p.tp} does not divide the query groups (model.arch.num_key_value_heads="
            f"{a.num_key_value_heads}); each TP rank must hold whole KV heads: choose tp from "
            f"{_divisors(a.num_key_value_heads)}"
        )
    if a.vocab_size % p.tp:
        err(
            f"parallel.tp={p.tp} does not divide model.arch.vocab_size={a.vocab_size}: choose tp "
            f"from {_divisors(a.vocab_size, 64)} or pad the vocabulary to a multiple of {p.tp}"
        )
    if p.sp and p.tp == 1:
        err("parallel.sp=true needs parallel.tp > 1: set parallel.sp=false or raise parallel.tp")

    # --- pipeline layout
    n_seg = p.pp * p.vpp
    segments: tuple[int, ...] = ()
    if p.vpp > 1 and p.pp == 1:
        err(f"parallel.vpp={p.vpp} needs parallel.pp > 1: set parallel.vpp=1 or raise parallel.pp")
    elif p.pipeline_layout is not None:
        lay = list(p.pipeline_layout)
        if len(lay) != n_seg:
            err(
                f"parallel.pipeline_layout has {len(lay)} entries but pp*vpp = {n_seg} segments: "
                f"give one layer count per segment"
            )
        elif sum(lay) != a.num_hidden_layers or min(lay) < 1:
            err(
                f"parallel.pipeline_layout={lay} must hold positive counts summing to "
                f"model.arch.num_hidden_layers={a.num_hidden_layers}"
            )
        else:
            segments = tuple(lay)
    elif a.num_hidden_layers % n_seg:
        good = [d for d in _divisors(a.num_hidden_layers) if d % p.pp == 0]
        err(
            f"model.arch.num_hidden_layers={a.num_hidden_layers} is not divisible by "
            f"pp*vpp = {p.pp}*{p.vpp} = {n_seg}: choose pp*vpp from {good}, or set "
            f"parallel.pipeline_layout to {n_seg} layer counts summing to {a.num_hidden_layers}"
        )
    else:
        segments = even_segments(a.num_hidden_layers, n_seg)

    # --- sequence and batch
    nmb = 1
    if training:
        nmb = _check_batch(cfg, dp, err)
        _check_training(cfg, err)

    # --- precision and kernels
    if prec.params_dtype not in DTYPES:
        err(f"precision.params_dtype={prec.params_dtype!r} is not one of {list(DTYPES)}")
    if cfg.runtime.device not in DEVICES:
        err(f"runtime.device={cfg.runtime.device!r} is not one of {list(DEVICES)}")
    if cfg.model.attention not in ATTENTION_BACKENDS:
        err(f"model.attention={cfg.model.attention!r} is not one of {list(ATTENTION_BACKENDS)}")
    if cfg.optim.impl not in ADAM_IMPLS:
        err(f"optim.impl={cfg.optim.impl!r} is not one of {list(ADAM_IMPLS)}")
    if cfg.model.kernels not in KERNEL_MODES:
        err(f"model.kernels={cfg.model.kernels!r} is not one of {list(KERNEL_MODES)}")
    if cfg.model.attention == "te" and not have_te:
        err(
            "model.attention=te needs Transformer Engine, which is not installed: "
            "pip install 'tulu-mcore[te]' on a CUDA machine, or set model.attention=sdpa"
        )
    elif cfg.model.attention == "te" and device == "cpu":
        err("model.attention=te needs a CUDA device: set model.attention=sdpa to run on CPU")
    if cfg.model.attention == "flex" and device == "cpu" and training:
        err("model.attention=flex cannot train on CPU (torch's flex_attention has no CPU backward): "
            "set model.attention=sdpa")
    if prec.fp8 is not None:
        if prec.fp8 not in FP8_FORMATS:
            err(f"precision.fp8={prec.fp8!r} is not one of {list(FP8_FORMATS)} (or null)")
        if prec.fp8_recipe not in FP8_RECIPES:
            err(f"precision.fp8_recipe={prec.fp8_recipe!r} is not one of {list(FP8_RECIPES)}")
        if not have_te:
            err(
                "precision.fp8 needs Transformer Engine, which is not installed (without it "
                "megatron-core silently runs in bf16): pip install 'tulu-mcore[te]' on a CUDA "
                "machine, or choose precision=bf16"
            )
        elif device == "cpu":
            err("precision.fp8 needs a CUDA device: set runtime.device=cuda or choose precision=bf16")
        elif cfg.model.attention in ("sdpa", "flex"):
            err(
                f"precision.fp8 runs only in Transformer Engine layers but model.attention="
                f"{cfg.model.attention} selects the local spec: set model.attention=te (or auto)"
            )
    elif prec.fp8_param:
        err("precision.fp8_param=true needs precision.fp8 set: set precision.fp8=e4m3 or fp8_param=false")

    if errs:
        raise ConfigError(errs)
    return Layout(
        world_size=world_size,
        tp=p.tp,
        pp=p.pp,
        vpp=p.vpp,
        cp=p.cp,
        dp=dp,
        sp=p.sp,
        segments=segments,
        num_microbatches=nmb,
    )


def _check_batch(cfg: RunConfig, dp: int, err) -> int:
    """Sequence length and batch sizes against the layout; returns micro-batches per step."""
    p, t = cfg.parallel, cfg.train
    if p.cp > 1 and t.seq_length % (2 * p.cp):
        err(
            f"train.seq_length={t.seq_length} is not divisible by 2*cp = {2 * p.cp} (context "
            f"parallel splits each sequence into 2*cp chunks): make seq_length a multiple of {2 * p.cp}"
        )
    if p.sp and t.seq_length % p.tp:
        err(
            f"train.seq_length={t.seq_length} is not divisible by tp={p.tp}, which sequence parallel "
            f"needs: make seq_length a multiple of {p.tp}"
        )
    if t.micro_batch_size < 1 or t.global_batch_size < 1:
        err("train.micro_batch_size and train.global_batch_size must be >= 1")
        return 1
    if t.global_batch_size % (t.micro_batch_size * dp):
        err(
            f"train.global_batch_size={t.global_batch_size} is not divisible by micro_batch_size*dp = "
            f"{t.micro_batch_size}*{dp}: make the global batch a multiple of "
            f"{t.micro_batch_size * dp}"
        )
    nmb = max(t.global_batch_size // (t.micro_batch_size * dp), 1)
    if p.vpp > 1 and nmb % p.pp:
        err(
            f"interleaved pipelining needs micro-batches per step ({nmb}) to be a multiple of pp="
            f"{p.pp}: raise train.global_batch_size to a multiple of {p.pp * t.micro_batch_size * dp}"
        )
    return nmb


def _choice(err, key: str, value, choices) -> None:
    if value not in choices:
        err(f"{key}={value!r} is not one of {list(choices)}")


def _check_training(cfg: RunConfig, err) -> None:
    """The training knobs: names that must be one of a set, ranges, and what packing requires."""
    t, o, d = cfg.train, cfg.optim, cfg.data
    _choice(err, "recipe.name", cfg.recipe.name, RECIPES)
    _choice(err, "loss.reduction", cfg.loss.reduction, REDUCTIONS)
    _choice(err, "optim.lr_schedule", o.lr_schedule, LR_SCHEDULES)
    _choice(err, "train.recompute", t.recompute, RECOMPUTE)
    _choice(err, "data.on_error", d.on_error, ON_ERROR)
    _choice(err, "data.unverifiable", d.unverifiable, ("keep", "bad"))
    ev = cfg.eval
    if ev.every_steps < 0:
        err(f"eval.every_steps={ev.every_steps} must be >= 0 (0: after the last step only)")
    if ev.max_new_tokens is not None and ev.max_new_tokens < 1:
        err(f"eval.max_new_tokens={ev.max_new_tokens} must be >= 1 (or null: rlvr.max_new_tokens)")
    if ev.data is not None and cfg.recipe.name in ("rlvr_grpo", "rlvr_ppo") and cfg.rlvr.async_generation:
        err("eval.data with rlvr.async_generation=true: the engine is generating the next step when an "
            "evaluation would run; evaluate with rlvr.async_generation=false")
    for key in ("lr", "min_lr", "weight_decay", "adam_beta1", "adam_beta2", "adam_eps", "clip_grad", "warmup_ratio"):
        if not math.isfinite(float(getattr(o, key))):
            err(f"optim.{key}={getattr(o, key)} must be a finite number")
    if t.seq_length < 1 or t.global_batch_size < 1 or t.micro_batch_size < 1:
        err(f"train.seq_length={t.seq_length}, train.global_batch_size={t.global_batch_size} and "
            f"train.micro_batch_size={t.micro_batch_size} must be >= 1")
    for item in d.train if isinstance(d.train, (list, tuple)) or OmegaConf.is_list(d.train) else []:
        cap = item.get("max_examples") if hasattr(item, "get") else None
        if cap is not None and (not isinstance(cap, int) or cap < 1):
            err(f"data.train entry {item.get('path')!r}: max_examples={cap} must be a whole number >= 1 (or absent)")
    if Path(cfg.run.dir).exists() and not Path(cfg.run.dir).is_dir():
        err(f"run.dir={cfg.run.dir} is a file, not a directory: name a directory (new or a run's)")
    if not 0.0 <= o.warmup_ratio < 1.0:
        err(f"optim.warmup_ratio={o.warmup_ratio} must be in [0, 1)")
    if o.lr < 0 or o.min_lr < 0 or o.min_lr > o.lr:
        err(f"optim.lr={o.lr} and optim.min_lr={o.min_lr} must satisfy 0 <= min_lr <= lr")
    for key in ("epochs", "save_interval", "keep_last"):
        if getattr(t, key) < 1:
            err(f"train.{key}={getattr(t, key)} must be >= 1")
    if t.max_steps is not None and t.max_steps < 1:
        err(f"train.max_steps={t.max_steps} must be >= 1 (or null to train for train.epochs)")
    if o.schedule_steps is not None and o.schedule_steps < 1:
        err(f"optim.schedule_steps={o.schedule_steps} must be >= 1 (or null: the schedule ends where the run stops)")
    pairs = cfg.recipe.name in ("dpo", "rm")
    if d.max_seq_len is not None and not pairs and not 1 <= d.max_seq_len <= t.seq_length:
        err(f"data.max_seq_len={d.max_seq_len} must be between 1 and train.seq_length={t.seq_length} "
            "(a conversation must fit one packed row): raise train.seq_length or lower data.max_seq_len")
    if d.max_seq_len is not None and pairs and not 1 <= 2 * d.max_seq_len <= t.seq_length:
        err(f"data.max_seq_len={d.max_seq_len}: recipe={cfg.recipe.name} packs a pair's chosen and rejected "
            f"sequences into one row, so train.seq_length={t.seq_length} must be at least 2 x data.max_seq_len")
    if cfg.recipe.name != "none" and t.micro_batch_size != 1:
        err(f"train.micro_batch_size={t.micro_batch_size}: packed micro-batches are one row of "
            "train.seq_length tokens; set train.micro_batch_size=1 (raise train.seq_length to pack more)")
    if cfg.recipe.name == "dpo":
        _check_dpo(cfg, err)
    if cfg.recipe.name in ("rlvr_grpo", "rlvr_ppo"):
        _check_rlvr(cfg, err)


def _check_rlvr(cfg: RunConfig, err) -> None:
    r, par, name = cfg.rlvr, cfg.parallel, cfg.recipe.name
    _choice(err, "rlvr.engine", r.engine, ENGINES)
    _choice(err, "rlvr.vllm.transport", r.vllm.transport, WEIGHT_TRANSPORTS)
    _choice(err, "rlvr.loss_aggregation", r.loss_aggregation, LOSS_AGGREGATIONS)
    _choice(err, "rlvr.pi_old", r.pi_old, PI_OLD)
    _choice(err, "rlvr.score_position", r.score_position, SCORE_POSITIONS)
    if r.loss_group_size < 1:
        err(f"rlvr.loss_group_size={r.loss_group_size} must be >= 1 (sequences per group of "
            "rlvr.loss_aggregation=group_token_mean)")
    if r.max_prompt_tokens is not None and r.max_prompt_tokens < 1:
        err(f"rlvr.max_prompt_tokens={r.max_prompt_tokens} must be >= 1 (or null: no filter)")
    if not r.verifier_timeout_s > 0:
        err(f"rlvr.verifier_timeout_s={r.verifier_timeout_s} must be > 0 (seconds one verifier check may take)")
    if par.cp > 1:
        err(f"recipe={name}: parallel.cp={par.cp}; RL rows hold short prompt + response sequences, use "
            "parallel.cp=1 (tensor, pipeline and data parallelism)")
    if par.pp > 1 and r.engine == "megatron":
        err(f"recipe={name} with rlvr.engine=megatron generates in the trainer's processes, which needs "
            f"parallel.pp=1 (got {par.pp}); use rlvr.engine=vllm for pipeline-parallel policies")
    if r.minibatches < 1 or (name == "rlvr_ppo" and r.minibatches != 1):
        err(f"rlvr.minibatches={r.minibatches}: GRPO takes >= 1 optimizer steps per batch of rollouts; PPO "
            "takes rlvr.ppo_epochs passes over the whole batch (keep 1)")
    if name == "rlvr_grpo" and r.samples_per_prompt < 2:
        err(f"rlvr.samples_per_prompt={r.samples_per_prompt}: GRPO normalises within a prompt's samples; use >= 2")
    if r.samples_per_prompt < 1 or r.max_new_tokens < 1 or r.temperature < 0 or not 0 < r.clip < 1 or r.beta < 0:
        err("rlvr: samples_per_prompt >= 1, max_new_tokens >= 1, temperature >= 0, 0 < clip < 1 and beta >= 0 "
            "are required")
    if name == "rlvr_ppo" and (r.ppo_epochs < 1 or not 0 <= r.gamma <= 1 or not 0 <= r.lam <= 1 or r.vf_coef <= 0
                               or r.value_clip <= 0):
        err("rlvr (PPO): ppo_epochs >= 1, gamma and lam in [0, 1], vf_coef > 0 and value_clip > 0 are required")
    if r.async_generation and r.engine != "vllm":
        err("rlvr.async_generation=true overlaps generation with training, which needs an engine outside the "
            "trainer's processes: set rlvr.engine=vllm")
    if r.engine == "vllm" and (r.vllm.tp < 1 or r.vllm.bucket_mb < 1 or not 0 < r.vllm.gpu_memory_utilization <= 1):
        err("rlvr.vllm: tp >= 1, bucket_mb >= 1 and 0 < gpu_memory_utilization <= 1 are required")
    if r.vllm.verify_every < 0 or (r.vllm.probe_tol is not None and r.vllm.probe_tol <= 0):
        err(f"rlvr.vllm.verify_every={r.vllm.verify_every} (>= 0; 0: never) and rlvr.vllm.probe_tol="
            f"{r.vllm.probe_tol} (> 0, or null for the dtype's default)")


def _check_dpo(cfg: RunConfig, err) -> None:
    p = cfg.dpo
    _choice(err, "dpo.loss_type", p.loss_type, DPO_LOSSES)
    _choice(err, "dpo.reference", p.reference, REFERENCES)
    if p.beta <= 0:
        err(f"dpo.beta={p.beta} must be > 0")
    if not 0.0 <= p.label_smoothing < 0.5:
        err(f"dpo.label_smoothing={p.label_smoothing} must be in [0, 0.5)")
    if p.label_smoothing and p.loss_type == "ipo":
        err("dpo.label_smoothing applies to the sigmoid losses (dpo, dpo_norm, simpo), not to ipo")
    if p.gamma and p.loss_type != "simpo":
        err(f"dpo.gamma={p.gamma} is SimPO's margin: set dpo.loss_type=simpo or dpo.gamma=0")
    if p.nll_weight < 0:
        err(f"dpo.nll_weight={p.nll_weight} must be >= 0")
    if p.loss_type == "simpo" and p.reference == "live":
        err("dpo.loss_type=simpo uses no reference model: set dpo.reference=cache (nothing is computed)")
