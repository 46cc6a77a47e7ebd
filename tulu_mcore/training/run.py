"""The one training loop and what every recipe shares, so that each algorithm file holds only its
algorithm: start-up, the tokenizer and tokenized data, model + optimizer + LR schedule (from
``model.init`` or resumed), the loop itself (:meth:`TrainingRun.loop`: a recipe hands it a step
function that returns the step's metrics record), the per-step bookkeeping (throughput, metrics, stop
requests, checkpoints) and the final export.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import psutil
import torch
import torch.distributed as dist

from tulu_mcore import runtime
from tulu_mcore.checkpoint.dist import load_checkpoint
from tulu_mcore.checkpoint.run import RunCheckpointer
from tulu_mcore.config.compose import to_yaml
from tulu_mcore.config.schema import RunConfig
from tulu_mcore.data import cache
from tulu_mcore.data.sources import env_cache_dir, source_specs
from tulu_mcore.data.tokenizer import load_tokenizer, tokenizer_files
from tulu_mcore.dtypes import TORCH_DTYPES
from tulu_mcore.errors import UserError
from tulu_mcore.launch.slurm import TIME_LIMIT_MARK
from tulu_mcore.metrics.flops import peak_flops, training_flops
from tulu_mcore.metrics.logger import MetricsLogger
from tulu_mcore.models.factory import build_model
from tulu_mcore.training.deadline import Deadline
from tulu_mcore.training.init import load_init_weights, resolve_init, tokenizer_path
from tulu_mcore.training.lock import lock_run_dir
from tulu_mcore.training.resume import check_changes, snapshot
from tulu_mcore.training.setup import build_optimizer, build_scheduler, recompute_overrides, wrap_for_training
from tulu_mcore.training.state import StopRequest, rng_state, set_rng_state


class StepAbandoned(Exception):
    """Raised by a step function that stopped (``TrainingRun.stop_at_phase``) before it changed the model."""

    def __init__(self, phase: str):
        super().__init__(phase)
        self.phase = phase


class TrainingRun:
    def __init__(self, cfg: RunConfig, name: str):
        from megatron.core import parallel_state as ps

        MetricsLogger.require_packages(cfg.metrics)  # TensorBoard / W&B if asked for: before any work
        self.cfg, self.name = cfg, name
        self.run_dir = Path(cfg.run.dir)
        self.init = resolve_init(cfg.model)
        if self.init.arch is not None:
            cfg.model.arch = self.init.arch  # the pretrained weights define the architecture
        self.rt = runtime.setup(cfg)
        self.layout, self.arch = self.rt.layout, cfg.model.arch
        self.device = "cuda" if self.rt.device == "cuda" else "cpu"
        self.tokenizer = load_tokenizer(tokenizer_path(cfg.model, self.init))
        if len(self.tokenizer) > self.arch.vocab_size:
            raise UserError(f"the tokenizer has {len(self.tokenizer)} tokens but the model's vocabulary is "
                            f"{self.arch.vocab_size}: use the tokenizer that belongs to the model")
        tok = self.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        lay = self.layout
        # documents padded for CP's 2*CP chunks and, under SP, a row length divisible by TP
        self.multiple = math.lcm(2 * lay.cp if lay.cp > 1 else 1, lay.tp if lay.sp else 1)
        self.rows_multiple = lay.pp if lay.vpp > 1 else 1  # interleaving wants a multiple of PP rows
        self.dp_rank, self.dp_size = ps.get_data_parallel_rank(), ps.get_data_parallel_world_size()
        # from the start: a SIGUSR1 during start-up would otherwise kill the process (its default action)
        self.stop = StopRequest()
        self.deadline = Deadline(cfg.run.time_limit, psutil.Process().create_time())
        self.unlock = lock_run_dir(self, self.run_dir, self.rt.is_main, self.log)  # before anything is read there
        self.ckpts = RunCheckpointer(self.run_dir, cfg.train.keep_last)
        self.latest = self.ckpts.latest_intact(self.log)  # resuming: weights come from there, not from model.init
        # saved before the policy at each checkpoint (PPO's value model): the policy's `latest` then
        # implies theirs
        self.companions: list = []

    # ---------------------------------------------------------------------------------- helpers
    def log(self, msg: str) -> None:
        if self.rt.is_main:
            print(f"[{self.name}] {msg}", flush=True)

    @property
    def trim_rows(self) -> bool:
        """Rows as long as their content, except with interleaved pipelining: there megatron-core's
        exchange of activation shapes between stages crashed (gloo, PP=2 with VPP), so rows keep the
        fixed length the schedule then expects."""
        return self.layout.vpp == 1

    def pack_options(self) -> dict:
        return dict(capacity=self.cfg.train.seq_length, multiple=self.multiple, pad_id=self.pad_id,
                    rows_multiple=self.rows_multiple, trim=self.trim_rows, dp_rank=self.dp_rank,
                    dp_size=self.dp_size)

    def prepare_data(self, kind: str = "sft") -> cache.TokenizedData:
        """Tokenized conversations (`kind="sft"`) or preference pairs (`"pairs"`, whose two sequences
        share a row: each is limited to half a row unless data.max_seq_len says otherwise)."""
        d, seq = self.cfg.data, self.cfg.train.seq_length
        limit = d.max_seq_len or (seq // 2 if kind == "pairs" else seq)
        return cache.prepare(source_specs(d.train), self.tokenizer,
                             cache_dir=Path(d.cache_dir or env_cache_dir()),
                             max_seq_len=limit, truncate=d.truncate,
                             on_error=d.on_error, seed=d.seed, kind=kind, log=self.log)

    def step_batches(self, data: cache.TokenizedData):
        """Which units each step trains on (see tulu_mcore.data.loader)."""
        from tulu_mcore.data.loader import StepBatches

        d = self.cfg.data
        return StepBatches(data, global_batch=self.cfg.train.global_batch_size, seed=d.seed, shuffle=d.shuffle)

    def planned_steps(self, steps_per_epoch: int) -> int:
        """train.max_steps, else train.epochs passes over the data."""
        return self.cfg.train.max_steps or self.cfg.train.epochs * steps_per_epoch

    # ---------------------------------------------------------------------------------- model
    def schedule_horizon(self, total_steps: int, updates_per_step: int = 1) -> int:
        """The LR schedule's length in optimizer steps: optim.schedule_steps (default: the run's
        `total_steps`) x the optimizer steps each step takes."""
        return (self.cfg.optim.schedule_steps or total_steps) * updates_per_step

    def build(self, total_steps: int, *, head: str = "lm", overrides: dict | None = None, updates_per_step: int = 1):
        """Model chunks wrapped for training, the optimizer and the LR schedule (see schedule_horizon;
        `updates_per_step` optimizer steps per step); weights from model.init unless a checkpoint of this
        run will be loaded by resume()."""
        cfg, lay = self.cfg, self.layout
        config_overrides = {"calculate_per_token_loss": True, **recompute_overrides(cfg.train.recompute)}
        if lay.pp > 1 and self.trim_rows:
            # rows vary in length: stages exchange shapes (megatron-core checks the MoE dispatcher
            # even for dense models: name one that allows it)
            config_overrides.update(variable_seq_lengths=True, moe_token_dispatcher_type="alltoall")
        config_overrides.update(overrides or {})
        self.config_overrides = config_overrides
        chunks = build_model(self.arch, lay, cfg.precision, device=self.rt.device, attention=cfg.model.attention,
                             kernels=cfg.model.kernels, init=self.init.kind == "none" and self.latest is None,
                             head=head, config_overrides=config_overrides)
        if self.latest is None:
            load_init_weights(chunks, self.init, head=head)
        self.head = head
        self.model = wrap_for_training(chunks, cfg.precision, cfg.optim)
        self.optimizer = build_optimizer(self.model, cfg.precision, cfg.optim)
        self.scheduler = build_scheduler(self.optimizer, cfg.optim, self.schedule_horizon(total_steps, updates_per_step))
        self.total_steps = total_steps
        return self.model, self.optimizer, self.scheduler

    def build_reference(self) -> list:
        """A frozen copy of the initial policy (for preference tuning): the policy's weights before
        the first step, or, when resuming, those of model.init loaded afresh."""
        from megatron.core.transformer.module import Float16Module

        from tulu_mcore.models.factory import unwrap

        cfg = self.cfg
        chunks = build_model(self.arch, self.layout, cfg.precision, device=self.rt.device,
                             attention=cfg.model.attention, kernels=cfg.model.kernels, init=False, head=self.head,
                             config_overrides=self.config_overrides)
        if self.latest is None:
            for ref, policy in zip(chunks, self.model):
                ref.load_state_dict(unwrap(policy).state_dict())
        elif self.init.kind == "none":
            raise UserError("the reference of a randomly initialised policy cannot be rebuilt once training "
                            "has started: set model.init (DPO: or keep dpo.reference=cache, computed at the start)")
        else:
            load_init_weights(chunks, self.init, head=self.head)
        config = chunks[0].config
        if config.bf16 or config.fp16:
            chunks = [Float16Module(config, c) for c in chunks]
        return chunks

    def resume(self, data_key: str) -> int:
        """Load the latest checkpoint of this run (if any); returns the step to start from."""
        start = 0
        if self.latest is not None:
            state = load_checkpoint(self.model, self.latest, optimizer=self.optimizer)
            common = state["common"]
            if common["data_key"] != data_key:
                raise UserError(f"{self.run_dir} was trained on other data (or another tokenizer or length "
                                "limit); use a new run.dir, or the data it was started with")
            for line in check_changes(common.get("config"), self.cfg, str(self.latest)):
                self.log(line)
            start = int(common["step"])
            self.scheduler.load_state_dict(common["scheduler"])
            if state["per_rank"] is not None:
                set_rng_state(state["per_rank"])
            self.log(f"resumed from {self.latest} at step {start}" + ("" if state["per_rank"] else
                     " (another world size: RNG streams restart; the data order does not depend on them)"))
        self.data_key = data_key
        self._start_loop(start)
        return start

    def _start_loop(self, start: int) -> None:
        cfg = self.cfg
        if self.rt.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            text = to_yaml(cfg)
            (self.run_dir / "config.yaml").write_text(text)  # the latest; each start's in configs/
            history = self.run_dir / "configs"
            history.mkdir(exist_ok=True)
            (history / f"{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-step{start}.yaml").write_text(text)
            if self.init.kind != "none" and cfg.optim.lr > 1e-4:
                self.log(f"warning: optim.lr={cfg.optim.lr:g} is a tiny demo's; pretrained Llamas train at "
                         "~1e-7..1e-5 (the Tülu 3 numbers: the tulu3_* experiments)")
        if start >= self.total_steps:
            self.log(f"already trained {start} of {self.total_steps} steps; raise train.max_steps to continue")
        self.start = start
        self.metrics = MetricsLogger(self.run_dir, start_step=start, total_steps=self.total_steps,
                                     tensorboard=cfg.metrics.tensorboard, progress=cfg.metrics.progress,
                                     config=cfg,  # W&B, rollout samples, plots (metrics/)
                                     enabled=self.rt.is_main, name=self.name)
        dev = torch.cuda.get_device_name() if self.device == "cuda" else ""
        self.peak = peak_flops(dev, "fp8" if cfg.precision.fp8 else "bf16") if dev else None
        self.t_start, self.first, self.last = time.time(), None, None
        self.step_ended = self.t_start  # when the last step ended: the deadline's step time
        self.step_s: float | None = None  # the last step's length
        self.saved_step = start if self.latest is not None else -1  # the step of the newest checkpoint
        self.stop_within_step = self.late_within_step = False  # decided by stop_at_phase

    # ---------------------------------------------------------------------------------- the loop
    def loop(self, train_step: Callable[[int], dict], cursor: Callable[[int], dict], *,
             closing: Iterable = (), evaluate: Callable[[], dict] | None = None) -> dict:
        """Train from the resumed step to the last: `train_step(step)` trains step `step` (0-based) and
        returns its metrics record (with a ``loss``); after it, the record is logged and a checkpoint
        written when due or asked for, with `cursor(steps done)`, the data position to save. Stops early
        on SIGTERM/SIGUSR1 (checkpoint saved). `closing`: things to close however the loop ends (a
        rollout engine). `evaluate()`: the held-out numbers (eval.data), added to the record as eval/...
        fields after every eval.every_steps steps and after the last. Returns the run's summary
        (:meth:`finish`)."""
        step = self.start
        try:
            while step < self.total_steps:
                try:
                    record = train_step(step)
                except StepAbandoned as stop:
                    self.abandon_step(step, stop.phase, cursor(step))
                    break
                step += 1
                if evaluate is not None and self.eval_due(step):
                    t0 = time.time()
                    record.update({f"eval/{k}": v for k, v in evaluate().items()}, eval_s=time.time() - t0)
                if self.end_step(step, record, cursor(step)):
                    break
        finally:
            for thing in closing:
                thing.close()
        return self.finish(step)

    def eval_due(self, step: int) -> bool:
        every = self.cfg.eval.every_steps
        return step == self.total_steps or (every > 0 and step % every == 0)

    def prepare_eval(self, kind: str = "sft") -> cache.TokenizedData | None:
        """eval.data tokenized as the training data (None without it); every data-parallel rank gets some."""
        if self.cfg.eval.data is None:
            return None
        d, seq = self.cfg.data, self.cfg.train.seq_length
        data = cache.prepare(source_specs(self.cfg.eval.data), self.tokenizer,
                             cache_dir=Path(d.cache_dir or env_cache_dir()),
                             max_seq_len=d.max_seq_len or (seq // 2 if kind == "pairs" else seq), truncate=d.truncate,
                             on_error=d.on_error, seed=d.seed, kind=kind, log=lambda m: self.log(f"eval {m}"))
        if data.units < self.dp_size:
            raise UserError(f"eval.data holds {data.units} usable examples, fewer than the {self.dp_size} "
                            "data-parallel ranks that share them")
        return data

    def eval_rows(self, data: cache.TokenizedData):
        """This data-parallel rank's share of the held-out data, packed as training rows."""
        from tulu_mcore.data.loader import pack_units

        opts = {k: v for k, v in self.pack_options().items() if k not in ("dp_rank", "dp_size")}
        return pack_units(data, list(range(self.dp_rank, data.units, self.dp_size)), **opts)

    # ---------------------------------------------------------------------------------- per step
    def throughput(self, rows, seconds: float, passes: float = 1.0) -> dict:
        """Tokens, packing and model FLOPs of a step, all data-parallel ranks together (`passes` scales
        the FLOPs, e.g. 4/3 for a reference forward beside the training step)."""
        from megatron.core import parallel_state as ps

        # counted on the host and reduced there (gloo): no device sync for the step's report
        counts = torch.tensor([sum(r.real_tokens for r in rows), len(rows), sum(r.tokens.shape[1] for r in rows),
                               training_flops(self.arch, [n for r in rows for n in r.seq_lens]) * passes],
                              dtype=torch.float64)
        dist.all_reduce(counts, group=ps.get_data_parallel_group_gloo())
        tokens, n_rows, row_tokens, flops = counts.tolist()
        tflops = flops / seconds / dist.get_world_size() / 1e12
        return {"tokens": int(tokens), "microbatches": int(n_rows) // self.dp_size,
                "packing_efficiency": tokens / row_tokens if row_tokens else 0.0, "step_time_s": seconds,
                "tokens_per_s": tokens / seconds, "tflops_per_gpu": tflops,
                "mfu": tflops * 1e12 / self.peak if self.peak else None}

    def end_step(self, step: int, record: dict, cursor: dict | None = None) -> bool:
        """Log the step, then checkpoint when due or asked to stop; True when the run must stop."""
        self.metrics.log({"step": step, **record})
        self.first = record["loss"] if self.first is None else self.first
        self.last = record["loss"]
        now = time.time()
        step_s, self.step_ended = now - self.step_ended, now
        self.step_s = step_s
        late = self.late_within_step or (step < self.total_steps and self.deadline.too_close(step_s))
        stopped = self.stop.requested(also=late) or self.stop_within_step
        if stopped or step == self.total_steps or step % self.cfg.train.save_interval == 0:
            self.timed_save(step, cursor)
        if stopped:
            self.announce_stop(step, late, f"a step takes ~{step_s:.0f} s")
        return stopped

    # ---------------------------------------------------------------------------------- stopping inside a step
    def stop_at_phase(self, rest_s: float = 0.0) -> bool:
        """Collective, at a point inside a long step where stopping is safe (RL: after generation, before
        the weight push): whether a stop signal reached any rank, or the step's remaining phases (`rest_s`,
        judged from the last step) and a save would overrun the time limit. A step that answers True
        before it changed the model raises :class:`StepAbandoned`; after, it skips what is left and the
        loop stops at its end."""
        late = self.step_s is not None and self.deadline.too_close(rest_s, step_s=0.0)
        if self.stop.requested(also=late):
            self.stop_within_step, self.late_within_step = True, late
            return True
        return False

    def abandon_step(self, step: int, phase: str, cursor: dict) -> None:
        """The step after `step` stopped before it changed the model: the state is that of the end of
        `step`, saved if it is not already, and the rerun trains the whole step again."""
        if step > max(self.saved_step, 0):  # nothing to save before the first step
            self.timed_save(step, cursor)
        self.announce_stop(step, self.late_within_step, f"stopped during step {step + 1}'s {phase}")

    def timed_save(self, step: int, cursor: dict | None) -> None:
        t0 = time.time()
        self.save(step, cursor)
        self.deadline.saved(time.time() - t0)

    def announce_stop(self, step: int, late: bool, detail: str) -> None:
        if late:
            if self.rt.is_main:  # a Slurm job requeues itself on it
                (self.run_dir / TIME_LIMIT_MARK).write_text(f"saved after step {step}\n")
            self.log(f"stopping before {self.deadline.source} ({self.deadline.left():.0f} s left; {detail}, a save "
                     f"~{self.deadline.save_s:.0f} s): checkpoint saved after step {step}; rerun the same command "
                     "to resume")
        else:
            self.log(f"stopping on {self.stop.name()} ({detail}): checkpoint saved after step {step}; rerun the "
                     "same command to resume")
        self.stopped = "time_limit" if late else True

    def save(self, step: int, cursor: dict | None = None) -> Path:
        for other in self.companions:
            other.save(step)
        self.saved_step = step
        return self.ckpts.save(
            step, self.model, optimizer=self.optimizer, per_rank=rng_state(),
            arch=self.arch, dtype=TORCH_DTYPES[self.cfg.precision.params_dtype], hf_config=self.init.hf_config,
            side_files=tokenizer_files(self.tokenizer), extra={"head": self.head},
            common={"step": step, "scheduler": self.scheduler.state_dict(), "data_key": self.data_key,
                    "cursor": cursor or {}, "config": snapshot(self.cfg)},
        )

    # ---------------------------------------------------------------------------------- the end
    def finish(self, step: int) -> dict:
        self.metrics.close()
        stopped = getattr(self, "stopped", False)
        summary = {"steps": step, "total_steps": self.total_steps, "stopped": stopped,
                   "run_dir": str(self.run_dir)}
        latest = self.ckpts.latest()
        if not stopped and step == self.total_steps and self.cfg.train.export_hf and latest is not None:
            from tulu_mcore.convert.mcore_to_hf import convert_mcore_to_hf

            out = convert_mcore_to_hf(str(latest), str(self.run_dir / "hf"), overwrite=True, progress=False)
            summary["hf"] = str(out)
            self.log(f"exported {out} (Hugging Face format)")
        if step > self.start:
            self.log(f"trained steps {self.start + 1}..{step} of {self.total_steps} in "
                     f"{time.time() - self.t_start:.0f}s; loss {self.first:.4f} -> {self.last:.4f}")
        self.unlock()
        runtime.teardown()
        return summary
