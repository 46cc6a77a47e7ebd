"""RL with verifiable rewards, PPO as in Tülu 3, on megatron-core: ``tulu-train recipe=rlvr_ppo``.

Each step takes ``train.global_batch_size`` prompts and ``rlvr.samples_per_prompt`` responses each (Tülu 3:
1) from the rollout engine. The score S of a response is ``rlvr.verified_reward`` when its verifier
passes; with ``rlvr.non_stop_penalty`` (Tülu 3: on, -10) a response that never ended scores
``rlvr.penalty_reward_value`` instead. With π_old the policy before this step's updates, π_ref the frozen
reference (log-probs of logits / (temperature + 1e-7), as Tülu's) and V_old the value model before them,
over the value positions t of a response:

    r_t = -β (log π_old(y_t) - log π_ref(y_t))  on response tokens, 0 after EOS;  + S at the score position
    δ_t = r_t + γ V_old(t+1) - V_old(t),   A_t = δ_t + γλ A_{t+1}     (GAE; V = 0 past the last position)
    R_t = A_t + V_old(t);  A over the response tokens whitened: (A - mean) rsqrt(var + 1e-8), unbiased var

``rlvr.score_position=after_eos`` (Tülu 3's layout) adds one value position after EOS, where the score
sits and V is kept (read from the EOS token's hidden state) and trained towards R = S; a response cut at
``rlvr.max_new_tokens`` has no such position and takes S at its last token. ``eos`` puts S on the last
response token with V = 0 after it. Then ``rlvr.ppo_epochs`` passes (Tülu 3: 4), each one optimizer step
of the policy on the clipped surrogate -min(ρA, clip(ρ, 1 ± ε) A), ρ = π/π_old, and one of the value
model on vf_coef · ½ max((V - R)², (clip(V, V_old ± ε_v) - R)²), each aggregated by
``rlvr.loss_aggregation`` over its positions.

Differences from the released Tülu 3 code, kept on purpose (π_old comes from a forward pass before the
updates, as released, so the first pass's ratio is 1 up to the two passes' numerics): advantages are whitened with the statistics
of the whole step (all data-parallel ranks) rather than of each rank's share, so the update does not
depend on the number of ranks; each pass takes the rollouts in order rather than in a fresh random order.
"""

from __future__ import annotations

import time
from functools import partial

import numpy as np
import torch
import torch.distributed as dist

from tulu_mcore.algorithms.rlvr.batch import RolloutBatch, is_replica_reporter
from tulu_mcore.algorithms.rlvr.driver import RolloutDriver, after_generation_s, start_rollouts
from tulu_mcore.algorithms.rlvr.prompts import load_eval_prompts, load_rlvr_data
from tulu_mcore.algorithms.rlvr.value import ValueModel
from tulu_mcore.config.schema import RlvrConfig, RunConfig
from tulu_mcore.training.run import StepAbandoned, TrainingRun
from tulu_mcore.training.setup import current_lr
from tulu_mcore.training.step import forward_outputs, optimizer_step, packed_forward, reduce_report

POLICY_REPORT = 4  # loss sum, response tokens, clipped tokens, approximate KL(π_old || π) sum
VALUE_REPORT = 4  # loss sum, response tokens, clipped tokens, squared error sum


def gae(rewards: np.ndarray, values: np.ndarray, gamma: float, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimates and returns over one response's value positions (1-D arrays)."""
    adv = np.zeros(len(rewards), dtype=np.float64)
    last = 0.0
    for t in reversed(range(len(rewards))):
        nxt = values[t + 1] if t + 1 < len(rewards) else 0.0
        last = rewards[t] + gamma * nxt - values[t] + gamma * lam * last
        adv[t] = last
    return adv, adv + values


def value_positions(response_len: int, max_new_tokens: int, score_position: str) -> int:
    """A response's value positions: its tokens, and with score_position=after_eos the one after its last
    token unless the response filled rlvr.max_new_tokens (Tülu 3's padding_mask_p1)."""
    return response_len + (score_position == "after_eos" and response_len < max_new_tokens)


def shaped_rewards(score_value: float, logp: np.ndarray, ref_logp: np.ndarray, beta: float,
                   positions: int | None = None) -> np.ndarray:
    """-β kl1 on each response token, 0 on a position after them; the sequence's score added at the
    last of the `positions` (default: the response's tokens)."""
    r = np.zeros(positions or len(logp), dtype=np.float64)
    r[:len(logp)] = -beta * (logp - ref_logp)
    r[-1] += score_value
    return r


def whitening(total: float, total_sq: float, n: float) -> tuple[float, float]:
    """(mean, rsqrt(var + 1e-8)) of n values with this sum and sum of squares; var unbiased (Tülu's
    masked_whiten: (x - mean) * rsqrt(var + 1e-8), the mean not added back)."""
    mean = total / n
    var = max(total_sq / n - mean * mean, 0.0) * n / max(n - 1, 1)
    return mean, 1.0 / np.sqrt(var + 1e-8)


def whiten(batch: RolloutBatch, field: str) -> None:
    """Each trajectory's `field` whitened over all response tokens of the step (every DP rank's; called
    by the ranks of one pipeline stage)."""
    from megatron.core import parallel_state as ps

    x = np.concatenate([getattr(t, field) for t in batch.trajectories])
    stats = torch.tensor([x.sum(), (x * x).sum(), x.size], dtype=torch.float64)
    dist.all_reduce(stats, group=ps.get_data_parallel_group())
    mean, scale = whitening(*stats.tolist())
    for t in batch.trajectories:
        setattr(t, field, (getattr(t, field) - mean) * scale)


def policy_loss(batch: dict, clip: float, output: torch.Tensor):
    mask = batch["loss_mask"].to(output.device).float()
    logp = -output.float()
    old, adv = batch["old_logps"].to(logp), batch["advantages"].to(logp)
    log_ratio = logp - old
    ratio = torch.exp(log_ratio)
    pg = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    total = (pg * mask * batch["loss_weights"].to(logp)).sum()
    with torch.no_grad():
        clipped = ((ratio - 1).abs() > clip).float()
        approx_kl = (ratio - 1) - log_ratio
        report = torch.stack([total.detach(), mask.sum(), (clipped * mask).sum(), (approx_kl * mask).sum()])
    return total, mask.sum().int(), {"ppo": report}


def value_loss(batch: dict, opts: RlvrConfig, output: torch.Tensor):
    mask = batch["value_mask"].to(output.device).float()
    v = output.float().reshape(mask.shape)
    old, ret = batch["old_values"].to(v), batch["returns"].to(v)
    v_clipped = old + (v - old).clamp(-opts.value_clip, opts.value_clip)
    err, err_clipped = (v - ret) ** 2, (v_clipped - ret) ** 2
    loss = opts.vf_coef * 0.5 * torch.max(err, err_clipped)
    total = (loss * mask * batch["value_weights"].to(v)).sum()
    with torch.no_grad():
        report = torch.stack([total.detach(), mask.sum(), ((err_clipped > err).float() * mask).sum(),
                              (err * mask).sum()])
    return total, mask.sum().int(), {"value": report}


def policy_forward_step(data_iterator, model, opts: RlvrConfig):
    batch = next(data_iterator)
    output, _ = packed_forward(batch, model, temperature=opts.temperature)
    return output, partial(policy_loss, batch, opts.clip)


def value_forward_step(data_iterator, model, opts: RlvrConfig):
    batch = next(data_iterator)
    output, _ = packed_forward(batch, model, labels=False)
    return output, partial(value_loss, batch, opts)


def prepare(tr: TrainingRun, batch: RolloutBatch, rows, microbatches: list[dict], reference, value: ValueModel):
    """π_old, π_ref and V_old of every response token (forward passes), then the shaped rewards, GAE,
    whitened advantages and the loss weights, into `microbatches`; (|engine - trainer| log-prob sum,
    kl1 sum) of the step, all ranks together."""
    opts, seq = tr.cfg.rlvr, tr.cfg.train.seq_length
    n_values = [value_positions(t.response_len, opts.max_new_tokens, opts.score_position) for t in batch.trajectories]
    batch.set_loss_weights(opts.loss_aggregation, opts.loss_group_size)
    batch.set_loss_weights(opts.loss_aggregation, opts.loss_group_size, "value_weights", lengths=n_values)
    # per-token values exist on the last pipeline stage only (the only one whose loss reads them)
    outs = {key: forward_outputs(net, microbatches, seq_length=seq, labels=labels,
                                 temperature=opts.temperature if labels else None)
            for key, net, labels in (("old_logps", tr.model, True), ("ref_logps", reference, True),
                                     ("old_values", value.model, False))}
    stats = torch.zeros(2, dtype=torch.float64)
    if outs["old_logps"] is not None:
        extra = {id(t): n - t.response_len for t, n in zip(batch.trajectories, n_values)}
        for key, per_row in outs.items():
            for row, out in zip(rows, per_row):
                if key == "old_values":
                    batch.from_token(row, out, key, extra=lambda t: extra[id(t)])
                else:
                    batch.from_token(row, -out, key)
        trajectories = batch.trajectories
        if is_replica_reporter():
            stats += torch.tensor([sum(np.abs(t.old_logps - t.engine_logps).sum() for t in trajectories),
                                   sum((t.old_logps - t.ref_logps).sum() for t in trajectories)])
        for t, n in zip(trajectories, n_values):
            rewards = shaped_rewards(t.score, t.old_logps, t.ref_logps, opts.beta, positions=n)
            adv, t.returns = gae(rewards, t.old_values, opts.gamma, opts.lam)
            t.advantages = adv[:t.response_len]
        whiten(batch, "advantages")
        for row, mb in zip(rows, microbatches):
            mb.update({k: batch.per_token(row, k) for k in ("advantages", "old_values", "returns")})
            mb["old_logps"] = batch.per_token(row, "engine_logps" if opts.pi_old == "engine" else "old_logps")
            mb["value_mask"] = batch.per_token(row, "returns", ones=True)
    for row, mb in zip(rows, microbatches):
        mb.update({k: batch.per_token(row, k) for k in ("loss_weights", "value_weights")})
    dist.all_reduce(stats)
    return stats


def ppo_step(tr: TrainingRun, rollouts: RolloutDriver, reference, value: ValueModel, step: int) -> dict:
    """Rollouts of `step`'s prompts, their advantages, then rlvr.ppo_epochs optimizer steps of the policy
    and of the value model; the metrics record."""
    opts, seq = tr.cfg.rlvr, tr.cfg.train.seq_length
    drawn = rollouts.step(step, tr.total_steps)
    if tr.stop_at_phase(rest_s=after_generation_s(tr, drawn)):  # a stop signal during a long generation
        raise StepAbandoned("generation")
    batch = drawn.batch
    tr.metrics.samples(step + 1, batch, rollouts)  # a few as text in samples.jsonl (metrics.samples_every)
    t_gen = time.time()
    rows = batch.pack(tr)
    microbatches = [row.as_batch() for row in rows]
    stats = prepare(tr, batch, rows, microbatches, reference, value)
    t_ref = time.time()
    lr = current_lr(tr.optimizer)
    clipped = approx_kl = v_clipped = 0.0
    for _ in range(opts.ppo_epochs):
        losses, ok, grad_norm = optimizer_step(tr.model, tr.optimizer, microbatches, seq_length=seq,
                                               forward_step=partial(policy_forward_step, opts=opts))
        tr.scheduler.step(1)
        v_losses, v_ok, v_grad_norm = optimizer_step(value.model, value.optimizer, microbatches, seq_length=seq,
                                                     forward_step=partial(value_forward_step, opts=opts))
        value.scheduler.step(1)
        p = reduce_report(losses, "ppo", POLICY_REPORT).tolist()
        v = reduce_report(v_losses, "value", VALUE_REPORT).tolist()
        clipped, approx_kl, v_clipped = clipped + p[2] / p[1], approx_kl + p[3] / p[1], v_clipped + v[2] / v[1]
    t_train = time.time()
    pushed = {} if tr.stop_at_phase() else rollouts.push(tr.model, tr.arch)  # stopping: no push, saved next
    (loss, tokens, *_), (v_loss, v_positions, _, v_sq) = p, v  # the last pass
    n_epochs = opts.ppo_epochs
    return {
        "loss": loss / tokens,  # the policy's surrogate on the last pass (the first is 0 by whitening)
        "value_loss": v_loss / v_positions,
        "value_mse": v_sq / v_positions,
        **batch.verifier_record(),
        "kl": stats[1].item() / tokens,  # kl1 per response token, π_old vs π_ref
        "clip_fraction": clipped / n_epochs,
        "approx_kl": approx_kl / n_epochs,  # π_old vs π over the passes
        "value_clip_fraction": v_clipped / n_epochs,
        "logprob_abs_diff": stats[0].item() / tokens,  # engine vs trainer, on the sampled tokens
        "grad_norm": grad_norm,
        "value_grad_norm": v_grad_norm,
        "lr": lr,
        "weight_version": batch.weight_version,
        "generation_s": drawn.generation_s,
        "logprob_s": t_ref - t_gen,
        "training_s": t_train - t_ref,
        **pushed,
        "skipped": not (ok and v_ok),
        **tr.throughput(rows, t_train - t_ref, passes=2 * n_epochs),  # policy + value passes
    }


def run(cfg: RunConfig) -> dict:
    opts = cfg.rlvr
    tr = TrainingRun(cfg, "ppo")
    data = load_rlvr_data(cfg, tr.tokenizer, tr.log, tr.dp_size)
    total = tr.planned_steps(data.steps_per_epoch)
    model, _, _ = tr.build(total, updates_per_step=opts.ppo_epochs)
    value = ValueModel(tr, tr.schedule_horizon(total, opts.ppo_epochs), opts.value_init, opts.value_lr)
    tr.companions.append(value)
    reference = tr.build_reference()
    tr.resume(data.key)
    value.resume(tr.latest)
    rollouts = start_rollouts(tr, model, data)
    held_out = load_eval_prompts(cfg, tr.tokenizer, tr.log, tr.dp_size)  # eval.data: greedy pass@1
    evaluate = partial(rollouts.evaluate, *held_out, cfg.eval.max_new_tokens or opts.max_new_tokens) if held_out else None
    return tr.loop(partial(ppo_step, tr, rollouts, reference, value), cursor=data.cursor, closing=[rollouts], evaluate=evaluate)
