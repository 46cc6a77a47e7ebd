"""Tülu 3 supervised finetuning on megatron-core: ``tulu-train recipe=sft``.

Conversations rendered with the Tülu template (assistant turns trained), tokenized once into a cache,
shuffled per epoch, split over data-parallel ranks and packed into rows; one optimizer step per global
batch through megatron's pipeline schedule with Tülu's sum loss (or a token mean). Checkpoints, resume,
stop requests, metrics and the final HF export are the shared machinery of
:class:`tulu_mcore.training.run.TrainingRun`.
"""

from __future__ import annotations

import time

from tulu_mcore.config.schema import RunConfig
from tulu_mcore.training.run import TrainingRun
from tulu_mcore.training.setup import current_lr
from tulu_mcore.training.step import packed_forward_step, train_step


def run(cfg: RunConfig) -> dict:
    tr = TrainingRun(cfg, "sft")
    data = tr.prepare_data("sft")
    batches = tr.step_batches(data)
    total = tr.total_steps(batches.steps_per_epoch)
    model, optimizer, scheduler = tr.build(total)
    step = tr.resume(data.key)
    while step < total:
        t0 = time.time()
        rows = batches.rows(step, **tr.pack_options())
        lr = current_lr(optimizer)
        result = train_step(model, optimizer, [r.as_batch() for r in rows], seq_length=cfg.train.seq_length,
                            micro_batch_size=1, forward_step=packed_forward_step, reduction=cfg.loss.reduction)
        scheduler.step(1)
        step += 1
        record = {
            "loss": result.loss,  # per sequence (sum) or per trained token (token_mean)
            "token_mean_loss": result.token_mean_loss,
            "grad_norm": result.grad_norm,
            "lr": lr,
            "trained_tokens": result.num_tokens,
            "sequences": result.num_seqs,
            "epoch": batches.cursor(step - 1).epoch,
            "skipped": result.skipped,
            **tr.throughput(rows, time.time() - t0),
        }
        if tr.end_step(step, record, batches.cursor(step).__dict__):
            break
    return tr.finish(step)
