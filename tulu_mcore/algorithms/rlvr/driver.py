"""Each RL step's rollouts from whichever engine, scored into a :class:`RolloutBatch`, and the weight push
after each step.

* An engine in the trainer's processes (``megatron``) generates each data-parallel rank's share of the
  step's prompts on that rank.
* An engine outside them (``vllm``) is driven from global rank 0, which sends every rank its share.
  With ``rlvr.async_generation`` the next step's prompts are submitted before this step trains, so
  generation overlaps training and the policy learns from rollouts one weight version old (the engine
  finishes that generation before it takes the next weights).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch.distributed as dist

from tulu_mcore.algorithms.rlvr.batch import RolloutBatch
from tulu_mcore.algorithms.rlvr.prompts import RlvrData
from tulu_mcore.config.schema import RlvrConfig
from tulu_mcore.errors import ConfigError, EngineError
from tulu_mcore.rewards.isolated import IsolatedChecker
from tulu_mcore.rollout import Rollout


@dataclass
class StepRollouts:
    """What a step trains on: this rank's scored rollouts, the epoch, and the seconds spent waiting
    for the engine."""

    batch: RolloutBatch
    epoch: int
    generation_s: float


class RolloutDriver:
    def __init__(self, engine, data: RlvrData, tokenizer, opts: RlvrConfig, *, seed: int, dp_rank: int,
                 dp_size: int):
        if opts.async_generation and engine.in_process:
            raise ConfigError("rlvr.async_generation=true overlaps generation with training, which needs an engine "
                              "outside the trainer's processes: rlvr.engine=vllm")
        self.engine, self.data, self.ids = engine, data, data.ids
        self.tokenizer, self.opts = tokenizer, opts
        self.sampling = dict(n=opts.samples_per_prompt, max_new_tokens=opts.max_new_tokens,
                             temperature=opts.temperature)
        self.seed, self.dp_rank, self.dp_size = seed, dp_rank, dp_size
        self.async_generation = opts.async_generation
        self.pending: dict[int, list[int]] = {}
        self.checker = IsolatedChecker(opts.verifier_timeout_s) if opts.verifier_process else None

    def step(self, step: int, total: int) -> StepRollouts:
        """`step`'s rollouts on this rank; in async mode the next step's generation is submitted before
        returning, to overlap this step's training."""
        epoch, indices = self.data.step_prompts(step)
        mine, groups, waited = self.take(step, indices)
        if self.async_generation and step + 1 < total:
            self.request(step + 1, self.data.step_prompts(step + 1)[1])
        batch = RolloutBatch.score([self.data.prompts[i] for i in mine], groups, self.tokenizer, self.opts,
                                   self.checker)
        return StepRollouts(batch, epoch, waited)

    def close(self) -> None:
        if self.checker is not None:
            self.checker.close()
        self.engine.close()

    def _seed(self, step: int) -> int:
        return self.seed * 100_003 + step * self.dp_size + (self.dp_rank if self.engine.in_process else 0)

    def request(self, step: int, indices: list[int]) -> None:
        """Ask for `step`'s rollouts (prompt indices of the whole step, all DP ranks)."""
        if step in self.pending:
            return
        self.pending[step] = indices
        if not self.engine.in_process and self.async_generation and dist.get_rank() == 0:
            try:
                self.engine.submit([self.ids[i] for i in indices], seed=self._seed(step), **self.sampling)
            except EngineError:
                pass  # the engine is gone: take() reports it on every rank

    def take(self, step: int, indices: list[int]) -> tuple[list[int], list[list[Rollout]], float]:
        """(this rank's prompt indices, their rollouts, seconds waited) for `step`."""
        t0 = time.time()
        self.request(step, indices)
        indices = self.pending.pop(step)
        mine = indices[self.dp_rank::self.dp_size]
        if self.engine.in_process:
            groups = self.engine.generate([self.ids[i] for i in mine], seed=self._seed(step), **self.sampling)
            return mine, groups, time.time() - t0
        groups = on_rank0(lambda: self.engine.collect() if self.async_generation else self.engine.generate(
            [self.ids[i] for i in indices], seed=self._seed(step), **self.sampling))
        return mine, groups[self.dp_rank::self.dp_size], time.time() - t0

    def evaluate(self, prompts: list, ids: list, max_new_tokens: int) -> dict:
        """One greedy response per held-out prompt from the engine's current weights, verified: pass@1,
        the verified rate per dataset, response length and the share cut at max_new_tokens (collective)."""
        greedy = dict(n=1, max_new_tokens=max_new_tokens, temperature=0.0)
        mine = list(range(self.dp_rank, len(prompts), self.dp_size))
        if self.engine.in_process:
            groups = self.engine.generate([ids[i] for i in mine], seed=0, **greedy)
        else:
            groups = on_rank0(lambda: self.engine.generate(ids, seed=0, **greedy))[self.dp_rank::self.dp_size]
        record = RolloutBatch.score([prompts[i] for i in mine], groups, self.tokenizer, self.opts,
                                    self.checker).verifier_record()
        return {"pass_at_1": record["verified_rate"],
                **{k.replace("verified_rate_", "pass_at_1_"): v for k, v in record.items()
                   if k.startswith("verified_rate_")},
                "response_length": record["response_length"], "truncation_rate": record["no_eos_rate"],
                "verifier_timeouts": record["verifier_timeouts"], "prompts": record["responses"]}

    def push(self, chunks, arch) -> dict:
        """The trainer's new weights into the engine (a collective over the trainer's ranks)."""
        t0 = time.time()
        sent = self.engine.push_weights(chunks, arch)
        # weight_verify_s (checksums and the probe, part of weight_push_s) and weight_probe_gap: vllm only
        return {"weight_push_s": time.time() - t0, "weight_push_bytes": sent,
                **getattr(self.engine, "push_stats", {})}


def on_rank0(call):
    """`call()` on global rank 0 (the one that speaks to an engine outside the trainer), its result on every
    rank; an EngineError there is raised on every rank, so that none waits for the others forever."""
    box = [None]
    if dist.get_rank() == 0:
        try:
            box[0] = call()
        except EngineError as e:
            box[0] = e
    dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], EngineError):
        raise box[0]
    return box[0]


def after_generation_s(tr, drawn: StepRollouts) -> float:
    """How long the rest of a step should take once its rollouts are in: the last step's length less
    this step's wait for them (0 before the first step ended)."""
    return max((tr.step_s or 0.0) - drawn.generation_s, 0.0)


def start_rollouts(tr, chunks, data: RlvrData) -> RolloutDriver:
    """The engine rlvr.engine names, started for the policy `chunks` of the run `tr` (after resume), and
    the per-step rollouts drawn from it."""
    cfg = tr.cfg
    return RolloutDriver(make_engine(tr, chunks), data, tr.tokenizer, cfg.rlvr, seed=cfg.runtime.seed,
                         dp_rank=tr.dp_rank, dp_size=tr.dp_size)


def make_engine(tr, chunks):
    """The engine rlvr.engine names, for the policy `chunks` (built, weights loaded or resumed); its
    weight version counts the policy's optimizer steps."""
    cfg = tr.cfg
    if cfg.rlvr.engine == "megatron":
        from tulu_mcore.rollout.megatron_engine import MegatronEngine

        engine = MegatronEngine(chunks, eos_id=tr.tokenizer.eos_token_id, max_sequence_length=cfg.train.seq_length)
        engine.weight_version = tr.start
        return engine
    from tulu_mcore.rollout.vllm_engine import VllmEngine

    return VllmEngine.start(cfg, chunks, arch=tr.arch, eos_id=tr.tokenizer.eos_token_id, run_dir=tr.run_dir,
                            ckpts=tr.ckpts, version=tr.start, log=tr.log)
