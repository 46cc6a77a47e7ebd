"""Tülu 3 supervised finetuning on megatron-core: ``tulu-train recipe=sft``.

The loop: conversations rendered with the Tülu template (assistant turns trained), tokenized once into
a cache, shuffled per epoch, split over data-parallel ranks and packed into rows; one optimizer step
per global batch through megatron's pipeline schedule; checkpoints every ``train.save_interval``
steps, on SIGTERM/SIGUSR1 and at the end; a rerun with the same ``run.dir`` resumes from the latest
checkpoint; the final model is exported to ``run.dir/hf``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import torch
import torch.distributed as dist

from tulu_mcore import runtime
from tulu_mcore.checkpoint.dist import load_checkpoint
from tulu_mcore.checkpoint.run import RunCheckpointer
from tulu_mcore.config.compose import to_yaml
from tulu_mcore.config.schema import RunConfig
from tulu_mcore.data import cache
from tulu_mcore.data.loader import StepBatches
from tulu_mcore.data.sources import env_cache_dir, source_specs
from tulu_mcore.data.tokenizer import load_tokenizer, tokenizer_files
from tulu_mcore.dtypes import TORCH_DTYPES
from tulu_mcore.errors import UserError
from tulu_mcore.metrics.flops import peak_flops, training_flops
from tulu_mcore.metrics.logger import MetricsLogger
from tulu_mcore.models.factory import build_model
from tulu_mcore.training.init import load_init_weights, resolve_init, tokenizer_path
from tulu_mcore.training.setup import (
    build_optimizer,
    build_scheduler,
    current_lr,
    recompute_overrides,
    wrap_for_training,
)
from tulu_mcore.training.state import StopRequest, rng_state, set_rng_state
from tulu_mcore.training.step import packed_forward_step, train_step


def trim_rows(layout) -> bool:
    """Rows as long as their content (no padding to train.seq_length), except with interleaved
    pipelining: there megatron-core's exchange of activation shapes between stages crashed (gloo, PP=2
    with VPP), so rows keep the fixed length the schedule then expects."""
    return layout.vpp == 1


def variable_lengths(layout) -> dict:
    """Pipeline stages exchange each activation's shape first when rows vary in length (megatron-core
    checks the MoE dispatcher even for dense models: name one that allows it)."""
    if layout.pp > 1 and trim_rows(layout):
        return {"variable_seq_lengths": True, "moe_token_dispatcher_type": "alltoall"}
    return {}


def log0(msg: str) -> None:
    if not dist.is_initialized() or dist.get_rank() == 0:
        print(f"[sft] {msg}", flush=True)


def run(cfg: RunConfig) -> dict:
    run_dir = Path(cfg.run.dir)
    init = resolve_init(cfg.model)
    if init.arch is not None:
        cfg.model.arch = init.arch  # the pretrained weights define the architecture
    rt = runtime.setup(cfg)
    lay, arch = rt.layout, cfg.model.arch
    from megatron.core import parallel_state as ps

    # ---------------------------------------------------------------- data
    tokenizer = load_tokenizer(tokenizer_path(cfg.model, init))
    if len(tokenizer) > arch.vocab_size:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary is "
                        f"{arch.vocab_size}: use the tokenizer that belongs to the model")
    max_len = cfg.data.max_seq_len or cfg.train.seq_length
    data = cache.prepare(
        source_specs(cfg.data.train), tokenizer, cache_dir=Path(cfg.data.cache_dir or env_cache_dir()),
        max_seq_len=max_len, truncate=cfg.data.truncate, on_error=cfg.data.on_error, seed=cfg.data.seed,
        log=log0,
    )
    batches = StepBatches(data, global_batch=cfg.train.global_batch_size, seed=cfg.data.seed,
                          shuffle=cfg.data.shuffle)
    total_steps = cfg.train.max_steps or cfg.train.epochs * batches.steps_per_epoch
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    multiple = math.lcm(2 * lay.cp if lay.cp > 1 else 1, lay.tp if lay.sp else 1)
    rows_multiple = lay.pp if lay.vpp > 1 else 1  # the interleaved schedule wants a multiple of PP rows
    dp_rank, dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()

    # ---------------------------------------------------------------- model and optimizer
    ckpts = RunCheckpointer(run_dir, cfg.train.keep_last)
    latest = ckpts.latest()  # resuming: the weights come from there, not from model.init
    chunks = build_model(
        arch, lay, cfg.precision, device=rt.device, attention=cfg.model.attention,
        init=init.kind == "none" and latest is None,
        config_overrides={"calculate_per_token_loss": True, **variable_lengths(lay),
                          **recompute_overrides(cfg.train.recompute)},
    )
    if latest is None:
        load_init_weights(chunks, init)
    model = wrap_for_training(chunks, cfg.precision, cfg.optim)
    optimizer = build_optimizer(model, cfg.precision, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)

    # ---------------------------------------------------------------- resume
    start = 0
    if latest is not None:
        state = load_checkpoint(model, latest, optimizer=optimizer)
        common = state["common"]
        if common["data_key"] != data.key:
            raise UserError(f"{run_dir} was trained on other data (or another tokenizer or length limit); "
                            "use a new run.dir, or the data it was started with")
        start = int(common["step"])
        scheduler.load_state_dict(common["scheduler"])
        if state["per_rank"] is not None:
            set_rng_state(state["per_rank"])
        log0(f"resumed from {latest} at step {start}" + ("" if state["per_rank"] else
             " (another world size: RNG streams restart; the data order does not depend on them)"))
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(to_yaml(cfg))
        if init.kind != "none" and cfg.optim.lr > 1e-4:
            log0(f"warning: optim.lr={cfg.optim.lr:g} is the tiny demo's; pretrained Llamas use ~1e-6..1e-5 "
                 "(the Tülu 3 numbers: experiment=tulu3_8b_sft / tulu3_70b_sft / tulu3_405b_sft)")
    if start >= total_steps:
        log0(f"already trained {start} of {total_steps} steps; raise train.max_steps to continue")

    # ---------------------------------------------------------------- train
    metrics = MetricsLogger(run_dir, start_step=start, total_steps=total_steps, tensorboard=cfg.metrics.tensorboard,
                            progress=cfg.metrics.progress, enabled=rt.is_main, name="sft")
    stop = StopRequest()
    device = "cuda" if rt.device == "cuda" else "cpu"
    peak = peak_flops(torch.cuda.get_device_name(), "fp8" if cfg.precision.fp8 else "bf16") if device == "cuda" else None
    dtype = TORCH_DTYPES[cfg.precision.params_dtype]
    save_kwargs = dict(arch=arch, dtype=dtype, hf_config=init.hf_config, side_files=tokenizer_files(tokenizer))
    t_start, first_loss, last_loss, stopped = time.time(), None, None, False
    step = start
    while step < total_steps:
        t0 = time.time()
        rows = batches.rows(step, dp_rank=dp_rank, dp_size=dp_size, capacity=cfg.train.seq_length,
                            multiple=multiple, pad_id=pad_id, rows_multiple=rows_multiple, trim=trim_rows(lay))
        lr = current_lr(optimizer)
        result = train_step(model, optimizer, [r.as_batch() for r in rows], seq_length=cfg.train.seq_length,
                            micro_batch_size=1, forward_step=packed_forward_step, reduction=cfg.loss.reduction)
        scheduler.step(1)
        step += 1
        # whole-batch counts: every DP rank packed its own share
        counts = torch.tensor([sum(r.real_tokens for r in rows), len(rows), sum(r.tokens.shape[1] for r in rows),
                               training_flops(arch, [n for r in rows for n in r.seq_lens])], dtype=torch.float64,
                              device=device)
        dist.all_reduce(counts, group=ps.get_data_parallel_group())
        real_tokens, n_rows, row_tokens, flops = counts.tolist()
        dt = time.time() - t0
        tflops = flops / dt / dist.get_world_size() / 1e12
        metrics.log({
            "step": step,
            "loss": result.loss,
            "token_mean_loss": result.token_mean_loss,
            "grad_norm": result.grad_norm,
            "lr": lr,
            "tokens": int(real_tokens),
            "trained_tokens": result.num_tokens,
            "sequences": result.num_seqs,
            "microbatches": int(n_rows) // dp_size,
            "packing_efficiency": real_tokens / row_tokens,
            "step_time_s": dt,
            "tokens_per_s": real_tokens / dt,
            "tflops_per_gpu": tflops,
            "mfu": tflops * 1e12 / peak if peak else None,
            "epoch": batches.cursor(step - 1).epoch,
            "skipped": result.skipped,
        })
        first_loss = result.loss if first_loss is None else first_loss
        last_loss = result.loss
        stopped = stop.requested(device)
        if stopped or step == total_steps or step % cfg.train.save_interval == 0:
            ckpts.save(step, model, optimizer=optimizer, per_rank=rng_state(), **save_kwargs,
                       common={"step": step, "scheduler": scheduler.state_dict(), "data_key": data.key,
                               "cursor": batches.cursor(step).__dict__})
        if stopped:
            log0(f"stopping on {stop.name()} after step {step}: checkpoint saved; rerun the same command to resume")
            break
    metrics.close()

    # ---------------------------------------------------------------- export and summary
    summary = {"steps": step, "total_steps": total_steps, "stopped": stopped, "run_dir": str(run_dir)}
    if not stopped and step == total_steps and cfg.train.export_hf and ckpts.latest() is not None:
        from tulu_mcore.convert.mcore_to_hf import convert_mcore_to_hf

        out = convert_mcore_to_hf(str(ckpts.latest()), str(run_dir / "hf"), overwrite=True, progress=False)
        summary["hf"] = str(out)
        log0(f"exported {out} (Hugging Face format)")
    if step > start:
        elapsed = time.time() - t_start
        log0(f"trained steps {start + 1}..{step} of {total_steps} in {elapsed:.0f}s; loss {first_loss:.4f} -> "
             f"{last_loss:.4f}")
    runtime.teardown()
    return summary
