"""RL with verifiable rewards, GRPO (Tülu 3.1) on megatron-core: ``tulu-train recipe=rlvr_grpo``.

Each step takes ``train.global_batch_size`` prompts (a seeded permutation per epoch, split over data-
parallel ranks); the rollout engine samples ``rlvr.samples_per_prompt`` responses per prompt; the
verifiers score them (``rlvr.verified_reward`` when verified; with ``rlvr.non_stop_penalty`` a response
that never ended scores ``rlvr.penalty_reward_value`` instead); advantages are the scores normalised
within each prompt's group (mean 0, divided by the group's standard deviation + 1e-8). Prompt + response
sequences are packed into rows, the frozen reference model gives each response token's log-prob, and
the policy takes ``rlvr.minibatches`` optimizer steps (split by prompts; Tülu 3.1: 2) on

    per token:  -min(r A, clip(r, 1 - ε, 1 + ε) A) + β kl3,   kl3 = expm1(-d) + d,  d = clamp(logp - ref, ±40)

aggregated by ``rlvr.loss_aggregation`` (Tülu 3.1: the mean of per-micro-batch token means, micro-
batches of 2 sequences). r = π/π_old; with ``rlvr.pi_old=trainer`` (Tülu) π_old is the trainer's own
log-prob before the step's first update: r is exactly 1 on the first mini-batch, and later mini-batches
read a forward pass taken before any update; ``rlvr.pi_old=engine`` takes the engine's sampling log-
probs instead (an off-policy correction). Every trainer log-prob divides the logits by
``rlvr.temperature`` + 1e-7, as the engine's (and Tülu's) do. Every step records the agreement of the
engine's sampling log-probs with the trainer's (exact comparison only on-policy).

A difference from the released code, kept on purpose: mini-batches split the rollouts by prompts and
loss groups are consecutive sequences (a prompt's samples together), where the release drew a fresh
random permutation of each rank's sequences; so the update does not depend on the layout.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch

from tulu_mcore.algorithms.rlvr.driver import RolloutDriver, after_generation_s, start_rollouts
from tulu_mcore.algorithms.rlvr.prompts import load_eval_prompts, load_rlvr_data
from tulu_mcore.config.schema import RlvrConfig, RunConfig
from tulu_mcore.training.run import StepAbandoned, TrainingRun
from tulu_mcore.training.setup import current_lr
from tulu_mcore.training.step import forward_outputs, optimizer_step, packed_forward, reduce_report

REPORT = 6  # loss sum, response tokens, kl3 sum, |engine - trainer| log-prob sum, clipped tokens, |r - 1| sum


def group_advantages(scores: np.ndarray) -> np.ndarray:
    """(score - group mean) / (group std + 1e-8), each row one prompt's samples (unbiased std, as
    torch.std)."""
    mean = scores.mean(axis=1, keepdims=True)
    std = scores.std(axis=1, ddof=1, keepdims=True) if scores.shape[1] > 1 else np.zeros_like(mean)
    return (scores - mean) / (std + 1e-8)


KL_CLAMP = 40.0  # Tülu 3.1 clamps logp - ref before kl3: one token far from the reference cannot make it inf


def grpo_token_loss(logp, old_logp, ref_logp, advantages, *, clip: float, beta: float):
    """Per-token GRPO loss and kl3 (tensors of the same shape)."""
    ratio = torch.exp(logp - old_logp)
    pg = -torch.min(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    d = (logp - ref_logp).clamp(-KL_CLAMP, KL_CLAMP)  # no gradient outside the clamp
    kl3 = torch.expm1(-d) + d
    return pg + beta * kl3, kl3, ratio


def grpo_loss(batch: dict, opts: RlvrConfig, output: torch.Tensor):
    mask = batch["loss_mask"].to(output.device).float()
    logp = -output.float()
    adv = batch["advantages"].to(logp)
    ref = batch["ref_logps"].to(logp)
    old = batch["old_logps"].to(logp) if "old_logps" in batch else logp.detach()  # ratio exactly 1
    loss, kl3, ratio = grpo_token_loss(logp, old, ref, adv, clip=opts.clip, beta=opts.beta)
    total = (loss * mask * batch["loss_weights"].to(logp)).sum()
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > opts.clip).float()
        agree = (logp - batch["engine_logps"].to(logp)).abs()
        report = torch.stack([total.detach(), mask.sum(), (kl3 * mask).sum(), (agree * mask).sum(),
                              (clipped * mask).sum(), ((ratio - 1).abs() * mask).sum()])
    return total, mask.sum().int(), {"grpo": report}


def grpo_forward_step(data_iterator, model, opts: RlvrConfig):
    batch = next(data_iterator)
    output, _ = packed_forward(batch, model, temperature=opts.temperature)
    return output, partial(grpo_loss, batch, opts)


def grpo_step(tr: TrainingRun, rollouts: RolloutDriver, reference, step: int) -> dict:
    """Rollouts of `step`'s prompts, then rlvr.minibatches optimizer steps on them; the metrics record."""
    cfg, opts = tr.cfg, tr.cfg.rlvr
    drawn = rollouts.step(step, tr.total_steps)
    if tr.stop_at_phase(rest_s=after_generation_s(tr, drawn)):  # a stop signal during a long generation
        raise StepAbandoned("generation")
    batch = drawn.batch
    tr.metrics.samples(step + 1, batch, rollouts)  # a few as text in samples.jsonl (metrics.samples_every)
    batch.set_advantages(group_advantages(batch.scores))
    lr = current_lr(tr.optimizer)
    t1 = time.time()
    parts = [(part, part.pack(tr)) for part in batch.split(opts.minibatches)]  # by prompts
    microbatches = [[row.as_batch() for row in rows] for _, rows in parts]
    for k, ((part, rows), batches) in enumerate(zip(parts, microbatches)):
        part.set_loss_weights(opts.loss_aggregation, opts.loss_group_size)
        # the reference's log-prob of every response token (read by the loss, on the last stage)
        ref = forward_outputs(reference, batches, seq_length=cfg.train.seq_length, temperature=opts.temperature)
        # π_old of a later mini-batch: the policy before this step's first update
        old = (forward_outputs(tr.model, batches, seq_length=cfg.train.seq_length, temperature=opts.temperature)
               if opts.pi_old == "trainer" and k > 0 else None)
        for i, (row, mb) in enumerate(zip(rows, batches)):
            mb.update({f: part.per_token(row, f) for f in ("advantages", "engine_logps", "loss_weights")})
            if ref is not None:
                mb["ref_logps"] = -ref[i].float()
            if old is not None:
                mb["old_logps"] = -old[i].float()
            if opts.pi_old == "engine":
                mb["old_logps"] = mb["engine_logps"]
    t_ref, t_opt = time.time() - t1, 0.0
    reports, all_rows, ok = [], [], True
    for (part, rows), batches in zip(parts, microbatches):
        t2 = time.time()
        losses, part_ok, grad_norm = optimizer_step(tr.model, tr.optimizer, batches, seq_length=cfg.train.seq_length,
                                                    forward_step=partial(grpo_forward_step, opts=opts))
        tr.scheduler.step(1)
        t_opt += time.time() - t2
        reports.append(reduce_report(losses, "grpo", REPORT))
        all_rows += rows
        ok = ok and part_ok
    pushed = {} if tr.stop_at_phase() else rollouts.push(tr.model, tr.arch)  # stopping: no push, saved next
    loss, tokens, kl, _, clipped, ratio_dev = torch.stack(reports).sum(0).tolist()
    first_tokens, agree = reports[0][1].item(), reports[0][3].item()  # before this step's updates
    return {
        "loss": loss / tokens,  # the aggregated loss (rlvr.loss_aggregation), over the mini-batches
        **batch.verifier_record(),
        "kl": kl / tokens,
        "clip_fraction": clipped / tokens,
        "ratio_dev": ratio_dev / tokens,  # mean |π/π_old - 1|
        "ratio_dev_first": reports[0][5].item() / first_tokens,  # on the first mini-batch (0 with pi_old=trainer)
        "logprob_abs_diff": agree / first_tokens,  # engine vs trainer, on the sampled tokens
        "grad_norm": grad_norm,
        "lr": lr,
        "weight_version": batch.weight_version,  # of the rollouts trained on
        "generation_s": drawn.generation_s,
        "reference_s": t_ref,
        "training_s": t_opt,
        **pushed,
        "skipped": not ok,
        **tr.throughput(all_rows, t_opt),
    }


def run(cfg: RunConfig) -> dict:
    opts = cfg.rlvr
    tr = TrainingRun(cfg, "grpo")
    data = load_rlvr_data(cfg, tr.tokenizer, tr.log, tr.dp_size)
    total = tr.planned_steps(data.steps_per_epoch)
    model, _, _ = tr.build(total, updates_per_step=opts.minibatches)
    reference = tr.build_reference()
    tr.resume(data.key)
    rollouts = start_rollouts(tr, model, data)
    held_out = load_eval_prompts(cfg, tr.tokenizer, tr.log, tr.dp_size)  # eval.data: greedy pass@1
    evaluate = partial(rollouts.evaluate, *held_out, cfg.eval.max_new_tokens or opts.max_new_tokens) if held_out else None
    return tr.loop(partial(grpo_step, tr, rollouts, reference), cursor=data.cursor, closing=[rollouts], evaluate=evaluate)
