"""RL with verifiable rewards, GRPO (Tülu 3.1) on megatron-core: ``tulu-train recipe=rlvr_grpo``.

Each step takes ``train.global_batch_size`` prompts (a seeded permutation per epoch, split over data-
parallel ranks); the rollout engine samples ``rlvr.samples_per_prompt`` responses per prompt; the
verifiers score them (``rlvr.verified_reward`` when verified; ``rlvr.no_eos_penalty`` replaces the
score of a response that never ended); advantages are the scores normalised within each prompt's group
(mean 0, divided by the group's standard deviation). Prompt + response sequences are packed into rows,
the frozen reference model gives each response token's log-prob, and the policy takes one step on

    per token:  -min(r A, clip(r, 1 - ε, 1 + ε) A) + β kl3,   kl3 = exp(ref - logp) - (ref - logp) - 1

averaged over all response tokens of the step (r = 1 on this single pass; the clip matters for reuse).
Every step records the agreement of the engine's sampling log-probs with the trainer's.
"""

from __future__ import annotations

import hashlib
import json
import time
from functools import partial

import numpy as np
import torch
import torch.distributed as dist

from tulu_mcore.config.schema import RlvrConfig, RunConfig
from tulu_mcore.data.packing import pack
from tulu_mcore.data.rlvr import encode_prompts, load_prompts
from tulu_mcore.data.sources import source_fingerprint, source_specs
from tulu_mcore.data.tokenizer import tokenizer_fingerprint
from tulu_mcore.errors import UserError
from tulu_mcore.rewards import DATASETS, check, reward
from tulu_mcore.rollout.megatron_engine import MegatronEngine
from tulu_mcore.training.run import TrainingRun
from tulu_mcore.training.setup import current_lr
from tulu_mcore.training.step import optimizer_step, packed_forward, reduce_report

REPORT = 5  # loss sum, response tokens, kl3 sum, |engine - trainer| log-prob sum, clipped tokens


def group_advantages(scores: np.ndarray) -> np.ndarray:
    """(score - group mean) / (group std + 1e-8), each row one prompt's samples (unbiased std, as
    torch.std)."""
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, ddof=1, keepdims=True) if scores.shape[1] > 1 else np.zeros_like(mean)
    return (scores - mean) / (std + 1e-8)


def grpo_token_loss(logp, old_logp, ref_logp, advantages, *, clip: float, beta: float):
    """Per-token GRPO loss and kl3 (tensors of the same shape)."""
    ratio = torch.exp(logp - old_logp)
    pg = -torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    d = ref_logp - logp
    kl3 = torch.exp(d) - d - 1
    return pg + beta * kl3, kl3, ratio


def grpo_loss(batch: dict, opts: RlvrConfig, output: torch.Tensor):
    mask = batch["loss_mask"].to(output.device).float()
    logp = -output.float()
    adv = batch["advantages"].to(logp)
    ref = batch["ref_logps"].to(logp)
    loss, kl3, ratio = grpo_token_loss(logp, logp.detach(), ref, adv, clip=opts.clip, beta=opts.beta)
    total = (loss * mask).sum()
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > opts.clip).float()
        agree = (logp - batch["engine_logps"].to(logp)).abs()
        report = torch.stack([total.detach(), mask.sum(), (kl3 * mask).sum(), (agree * mask).sum(),
                              (clipped * mask).sum()])
    return total, mask.sum().int(), {"grpo": report}


def grpo_forward_step(data_iterator, model, opts: RlvrConfig):
    batch = next(data_iterator)
    output, _ = packed_forward(batch, model)
    return output, partial(grpo_loss, batch, opts)


def per_token(row, docs: list[dict], key: str) -> torch.Tensor:
    """[1, T]: each document's per-response-token values (`docs[i][key]`) at the positions that predict
    those tokens (the loss mask's positions), zeros elsewhere."""
    arr = torch.zeros_like(row.loss_mask, dtype=torch.float32)
    for d, unit in enumerate(row.units):
        start = int(row.cu_seqlens_padded[d]) + docs[unit]["prompt_len"] - 1
        vals = torch.as_tensor(docs[unit][key], dtype=torch.float32)
        arr[0, start:start + len(vals)] = vals
    return arr


def _data_key(specs, tokenizer) -> str:
    ident = {"kind": "rlvr", "sources": [source_fingerprint(s) for s in specs],
             "tokenizer": tokenizer_fingerprint(tokenizer)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:20]


def run(cfg: RunConfig) -> dict:
    from megatron.core import parallel_state as ps

    opts = cfg.rlvr
    tr = TrainingRun(cfg, "grpo")
    if opts.engine != "megatron":
        raise UserError(f"rlvr.engine={opts.engine!r}: the engine available is megatron")
    specs = source_specs(cfg.data.train)
    loaded = load_prompts(specs, on_error=cfg.data.on_error, seed=cfg.data.seed)
    tr.log(f"data: {len(loaded.prompts):,} prompts ({loaded.examples_seen:,} read; skipped: "
           f"{dict(loaded.skipped) or 'none'})")
    prompts, ids = loaded.prompts, encode_prompts(loaded.prompts, tr.tokenizer)
    per_step = cfg.train.global_batch_size
    if per_step % tr.dp_size:
        raise UserError(f"train.global_batch_size={per_step} prompts must divide over {tr.dp_size} data-parallel ranks")
    steps_per_epoch = len(prompts) // per_step
    if steps_per_epoch == 0:
        raise UserError(f"{len(prompts)} prompts: fewer than one step's train.global_batch_size={per_step}")
    longest = max(len(x) for x in ids)
    if longest + opts.max_new_tokens > cfg.train.seq_length:
        raise UserError(f"a prompt of {longest} tokens + rlvr.max_new_tokens={opts.max_new_tokens} does not fit "
                        f"train.seq_length={cfg.train.seq_length}: raise train.seq_length")
    total = tr.total_steps(steps_per_epoch)
    model, optimizer, scheduler = tr.build(total)
    reference = tr.build_reference()
    engine = MegatronEngine(model, eos_id=tr.tokenizer.eos_token_id, max_sequence_length=cfg.train.seq_length)
    step = tr.resume(_data_key(specs, tr.tokenizer))
    while step < total:
        t0 = time.time()
        epoch, k = divmod(step, steps_per_epoch)
        order = np.random.default_rng(cfg.data.seed + epoch).permutation(len(prompts))
        mine = [int(i) for i in order[k * per_step:(k + 1) * per_step][tr.dp_rank::tr.dp_size]]
        groups = engine.generate([ids[i] for i in mine], n=opts.samples_per_prompt,
                                 max_new_tokens=opts.max_new_tokens, temperature=opts.temperature,
                                 seed=cfg.runtime.seed * 100_003 + step * tr.dp_size + tr.dp_rank)
        t_gen = time.time()
        docs, scores, counts = [], [], torch.zeros(len(DATASETS), 5, dtype=torch.float64)
        for i, group in zip(mine, groups):
            p = prompts[i]
            row_scores = []
            for r in group:
                verdict = check(p.dataset, tr.tokenizer.decode(r.response.tolist(), skip_special_tokens=True),
                                p.ground_truth, tulu3_compat=opts.tulu3_compat)
                row_scores.append(reward(verdict, r.finished, verified_reward=opts.verified_reward,
                                         no_eos_penalty=opts.no_eos_penalty))
                counts[DATASETS.index(p.dataset)] += torch.tensor(
                    [1, verdict.verified, not r.finished, len(r.response), row_scores[-1]], dtype=torch.float64)
                docs.append({"ids": np.concatenate([r.prompt, r.response]), "prompt_len": len(r.prompt),
                             "engine_logps": r.logprobs})
            scores.append(row_scores)
        adv = group_advantages(np.asarray(scores, dtype=np.float64))
        for d, a in zip(docs, adv.reshape(-1)):
            d["advantages"] = np.full(len(d["ids"]) - d["prompt_len"], a)
        examples = []
        for d in docs:
            trained = np.zeros(len(d["ids"]), np.uint8)
            trained[d["prompt_len"]:] = 1
            examples.append((d["ids"], trained))
        rows = pack(examples, cfg.train.seq_length, multiple=tr.multiple, pad_id=tr.pad_id, trim=tr.trim_rows)
        batches = []
        for row in rows:
            batch = row.as_batch()
            with torch.no_grad():  # the reference's log-prob of every response token
                ce, _ = packed_forward(batch, reference[0])
            batch.update(ref_logps=-ce.float().cpu(), advantages=per_token(row, docs, "advantages"),
                         engine_logps=per_token(row, docs, "engine_logps"))
            batches.append(batch)
        t_ref = time.time()
        lr = current_lr(optimizer)
        losses, ok, grad_norm = optimizer_step(model, optimizer, batches, seq_length=cfg.train.seq_length,
                                               forward_step=partial(grpo_forward_step, opts=opts))
        scheduler.step(1)
        engine.update_weights()
        step += 1
        t_train = time.time()
        loss, tokens, kl, agree, clipped = reduce_report(losses, "grpo", REPORT).tolist()
        if ps.get_tensor_model_parallel_rank() != 0:
            counts.zero_()  # every TP rank scored the same rollouts
        dist.all_reduce(counts)
        n, verified, no_eos, length, score = counts.sum(0).tolist()
        record = {
            "loss": loss / tokens,
            "reward_mean": score / n,
            "verified_rate": verified / n,
            **{f"verified_rate_{name}": counts[j, 1].item() / counts[j, 0].item()
               for j, name in enumerate(DATASETS) if counts[j, 0] > 0},
            "kl": kl / tokens,
            "clip_fraction": clipped / tokens,
            "response_length": length / n,
            "no_eos_rate": no_eos / n,
            "logprob_abs_diff": agree / tokens,  # engine vs trainer, on the sampled tokens
            "grad_norm": grad_norm,
            "lr": lr,
            "responses": int(n),
            "weight_version": engine.weight_version,
            "generation_s": t_gen - t0,
            "reference_s": t_ref - t_gen,
            "training_s": t_train - t_ref,
            "skipped": not ok,
            **tr.throughput(rows, t_train - t_ref),
        }
        if tr.end_step(step, record, {"step": step, "epoch": epoch}):
            break
    return tr.finish(step)
