"""Direct preference optimisation on megatron-core: ``tulu-train recipe=dpo``.

Each pair's chosen and rejected sequences share a packed row, so one forward gives both log-prob sums
(per-sequence sums of the vocab-parallel cross entropy, never a vocabulary gather). The loss of each
pair is :func:`preference_loss`; the global batch's loss is the mean over its pairs (the normaliser is
the pair count, counted once per pair whatever the layout). The reference policy's log-probs come
from a disk cache computed once before training, or from a live frozen model
(:mod:`tulu_mcore.training.reference`).
"""

from __future__ import annotations

import time
from functools import partial

import torch
import torch.nn.functional as F

from tulu_mcore.config.schema import DpoConfig, RunConfig
from tulu_mcore.training.reference import (
    LiveReference,
    ReferenceCache,
    build_cache,
    reference_identity,
)
from tulu_mcore.training.run import TrainingRun
from tulu_mcore.training.sequences import is_cp_rank0, sequence_logps
from tulu_mcore.training.setup import current_lr
from tulu_mcore.training.step import forward_reports, optimizer_step, packed_forward, reduce_report

AVERAGED = ("dpo_norm", "ipo", "simpo")  # losses on per-token (length-averaged) log-probs


def preference_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                    chosen_lengths, rejected_lengths, *, loss_type: str, beta: float,
                    label_smoothing: float = 0.0, gamma: float = 0.0) -> torch.Tensor:
    """Per-pair loss from per-sequence log-prob sums and trained-token counts.

    * ``dpo``: -(1-ε) log σ(β h) - ε log σ(-β h), h = (π_c - ref_c) - (π_r - ref_r) on sums (ε > 0: cDPO);
    * ``dpo_norm``: the same on per-token averages (Tülu 3);
    * ``ipo``: (h - 1/(2β))² on per-token averages;
    * ``simpo``: -(1-ε) log σ(β (π_c - π_r) - γ) - ε log σ(-(...)) on per-token averages, no reference
      (the reference arguments may be None).
    """
    pc, pr = policy_chosen_logps, policy_rejected_logps
    rc, rr = ref_chosen_logps, ref_rejected_logps
    if loss_type in AVERAGED:
        pc, pr = pc / chosen_lengths, pr / rejected_lengths
        if loss_type != "simpo":
            rc, rr = rc / chosen_lengths, rr / rejected_lengths
    if loss_type == "simpo":
        z = beta * (pc - pr) - gamma
    elif loss_type in ("dpo", "dpo_norm", "ipo"):
        h = (pc - rc) - (pr - rr)
        if loss_type == "ipo":
            return (h - 1.0 / (2.0 * beta)) ** 2
        z = beta * h
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def implicit_rewards(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps,
                     chosen_lengths, rejected_lengths, *, loss_type: str, beta: float):
    """(chosen, rejected) rewards as each loss defines them: β x the (averaged, for the length-normalised
    losses) log-ratio to the reference; SimPO's reward is β x the average log-prob itself."""
    pc, pr, rc, rr = policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps
    if loss_type in AVERAGED:
        pc, pr = pc / chosen_lengths, pr / rejected_lengths
        if loss_type == "simpo":
            return beta * pc, beta * pr
        rc, rr = rc / chosen_lengths, rr / rejected_lengths
    return beta * (pc - rc), beta * (pr - rr)


# report: loss sum, pairs, correct, margin sum, chosen / rejected reward sums, chosen / rejected average
# log-prob sums, trained tokens
REPORT = 9


def dpo_loss(local: dict, batch: dict, opts: DpoConfig, output: torch.Tensor):
    n = batch["num_seqs"]
    logps, counts = sequence_logps(output, local, n)
    pc, pr, lc, lr = logps[0::2], logps[1::2], counts[0::2], counts[1::2]
    ref = batch.get("ref_logps")
    rc = rr = None
    if ref is not None:
        ref = ref.to(logps)
        rc, rr = ref[0::2], ref[1::2]
    kw = dict(loss_type=opts.loss_type, beta=opts.beta)
    losses = preference_loss(pc, pr, rc, rr, lc, lr, label_smoothing=opts.label_smoothing, gamma=opts.gamma, **kw)
    if opts.nll_weight:
        losses = losses + opts.nll_weight * (-pc / lc)
    total = losses.sum()
    own = float(is_cp_rank0())  # every CP rank holds the same pairs: count them once
    with torch.no_grad():
        cr, rj = implicit_rewards(pc, pr, rc, rr, lc, lr, **kw) if ref is not None or opts.loss_type == "simpo" \
            else (pc * 0, pr * 0)
        report = torch.stack([total.detach(), torch.tensor(n // 2, dtype=total.dtype, device=total.device),
                              (cr > rj).sum().to(total), (cr - rj).sum(), cr.sum(), rj.sum(),
                              (pc / lc).sum(), (pr / lr).sum(), lc.sum() + lr.sum()]) * own
    return total, torch.tensor(int(n // 2 * own), device=total.device), {"dpo": report}


def dpo_forward_step(data_iterator, model, opts: DpoConfig):
    batch = next(data_iterator)
    output, local = packed_forward(batch, model)
    return output, partial(dpo_loss, local, batch, opts)


def _reference(tr: TrainingRun, data, opts: DpoConfig, held_out: bool = False):
    """The cache (built now when missing) or the live model; None for SimPO. The held-out pairs' cache
    sits in `eval/` under an explicit dpo.reference_cache."""
    cfg = tr.cfg
    if opts.loss_type == "simpo":
        return None
    if opts.reference == "live":
        return LiveReference(tr.build_reference())
    parts = ReferenceCache.key_parts(data, reference_identity(tr.init, cfg.runtime.seed, cfg.precision.params_dtype,
                                                      tr.layout))
    explicit = opts.reference_cache and (f"{opts.reference_cache}/eval" if held_out else opts.reference_cache)
    path = ReferenceCache.locate(explicit, data.path.parent, parts)
    if not (path / "meta.json").is_file():
        # the initial policy is the reference; a resumed run's policy has moved on: load it afresh
        model = tr.model if tr.latest is None else tr.build_reference()
        build_cache(model, data, path, parts, pack_options=tr.pack_options(), seq_length=cfg.train.seq_length,
                    units_per_pass=cfg.train.global_batch_size, log=tr.log, show_progress=cfg.metrics.progress)
    else:
        tr.log(f"reference log-probs from {path}")
    return ReferenceCache.load(path, data)


def dpo_step(tr: TrainingRun, batches, reference, step: int) -> dict:
    """One optimizer step on `step`'s preference pairs (their reference log-probs from `reference`);
    its metrics record."""
    opts, seq = tr.cfg.dpo, tr.cfg.train.seq_length
    t0 = time.time()
    rows = batches.rows(step, **tr.pack_options())
    live = isinstance(reference, LiveReference)
    microbatches = with_refs([r.as_batch() for r in rows], rows, reference, seq)
    lr = current_lr(tr.optimizer)
    losses, ok, grad_norm = optimizer_step(tr.model, tr.optimizer, microbatches, seq_length=seq,
                                           forward_step=partial(dpo_forward_step, opts=opts))
    tr.scheduler.step(1)
    loss, pairs, correct, margin, cr, rj, lpc, lpr, tokens = reduce_report(losses, "dpo", REPORT).tolist()
    return {
        "loss": loss / pairs,  # mean over the global batch's pairs
        "accuracy": correct / pairs,  # share of pairs whose chosen reward beats the rejected one
        "margin": margin / pairs,
        "rewards_chosen": cr / pairs,
        "rewards_rejected": rj / pairs,
        "logps_chosen": lpc / pairs,  # per token
        "logps_rejected": lpr / pairs,
        "grad_norm": grad_norm,
        "lr": lr,
        "pairs": int(pairs),
        "trained_tokens": int(tokens),
        "epoch": batches.cursor(step).epoch,
        "skipped": not ok,
        **tr.throughput(rows, time.time() - t0, passes=4 / 3 if live else 1.0),
    }


def with_refs(microbatches: list[dict], rows, reference, seq: int) -> list[dict]:
    """The micro-batches with their pairs' reference log-probs (`reference`: a cache, a live model or
    None for SimPO)."""
    if isinstance(reference, LiveReference):
        refs = reference.row_refs(rows, seq)
    elif reference is not None:
        refs = [reference.row_refs(r.units) for r in rows]
    else:
        refs = None
    for mb, ref in zip(microbatches, refs or []):  # none on the stages before the last (pipelining)
        mb["ref_logps"] = ref
    return microbatches


def heldout_preferences(tr: TrainingRun, data, reference) -> dict:
    """Preference accuracy, margin and loss on the held-out pairs (eval.data)."""
    rows = tr.eval_rows(data)
    microbatches = with_refs([r.as_batch() for r in rows], rows, reference, tr.cfg.train.seq_length)
    loss, pairs, correct, margin, *_ = forward_reports(tr.model, microbatches, seq_length=tr.cfg.train.seq_length,
                                                       forward_step=partial(dpo_forward_step, opts=tr.cfg.dpo),
                                                       key="dpo", size=REPORT).tolist()
    return {"loss": loss / pairs, "accuracy": correct / pairs, "margin": margin / pairs, "pairs": int(pairs)}


def run(cfg: RunConfig) -> dict:
    tr = TrainingRun(cfg, "dpo")
    data, held_out = tr.prepare_data("pairs"), tr.prepare_eval("pairs")
    batches = tr.step_batches(data)
    tr.build(tr.planned_steps(batches.steps_per_epoch))
    reference = _reference(tr, data, cfg.dpo)
    if held_out is not None:  # a live reference serves both; a cache is per data
        ref = (reference if reference is None or isinstance(reference, LiveReference)
               else _reference(tr, held_out, cfg.dpo, held_out=True))
        evaluate = partial(heldout_preferences, tr, held_out, ref)
    else:
        evaluate = None
    tr.resume(data.key)
    return tr.loop(partial(dpo_step, tr, batches, reference), cursor=lambda step: vars(batches.cursor(step)),
                   evaluate=evaluate)
