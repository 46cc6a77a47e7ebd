"""Worker: the peak memory of training steps at several layouts in one launch (full packed rows of
train.seq_length tokens, one document each), each measured as the ranks' peak resident memory above what
they held before its model was built (the peak is reset between layouts); rank 0 writes, per layout, the
largest over ranks with the planner's estimate for the same config.

    torchrun --nproc-per-node N tests/workers/peak_memory.py OUT.json COMMON_OVERRIDES... \
        --layout NAME OVERRIDES... [--layout NAME OVERRIDES...]
"""

import gc
import json
import sys

import psutil


def reset_peak() -> None:
    """Start a new resident-memory peak (Linux: VmHWM := VmRSS)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def peak_rss() -> int:
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def measure(overrides: list[str]) -> dict:
    import numpy as np
    import torch.distributed as dist

    from tulu_mcore import runtime
    from tulu_mcore.config.compose import compose
    from tulu_mcore.data.packing import pack
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.plan import estimate
    from tulu_mcore.training.setup import build_optimizer, wrap_for_training
    from tulu_mcore.training.step import packed_forward_step, train_step

    cfg = compose(["runtime.device=cpu", "model.attention=sdpa", *overrides])
    rt = runtime.setup(cfg)
    lay = rt.layout
    arch = cfg.model.arch
    rng = np.random.default_rng(0)
    seq = cfg.train.seq_length
    rows = [pack([(rng.integers(2, arch.vocab_size, seq), np.ones(seq, np.uint8))], seq)[0].as_batch()
            for _ in range(lay.num_microbatches)]
    gc.collect()
    reset_peak()
    base = psutil.Process().memory_info().rss
    chunks = build_model(arch, lay, cfg.precision, device="cpu", attention="sdpa",
                         config_overrides={"calculate_per_token_loss": True})
    model = wrap_for_training(chunks, cfg.precision, cfg.optim)
    optimizer = build_optimizer(model, cfg.precision, cfg.optim)
    # the peak is a step's with Adam's states in memory; an update on zero gradients creates them (and
    # moves nothing) without a first forward and backward, the bulk of this test's time
    for chunk in model:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    optimizer.step()
    train_step(model, optimizer, rows, seq_length=seq, micro_batch_size=1, forward_step=packed_forward_step,
               reduction="sum")
    peak = peak_rss() - base
    peaks = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, peak)
    runtime.teardown()
    del model, optimizer, chunks
    gc.collect()
    return {"measured_gib": max(peaks) / 2**30, "estimated_gib": estimate(cfg, lay, device="cpu").peak_gib}


def main(out: str, argv: list[str]) -> None:
    import torch.distributed as dist

    common, layouts, cur = [], {}, None
    for i, a in enumerate(argv):
        if a == "--layout":
            cur = layouts.setdefault(argv[i + 1], [])
        elif i > 0 and argv[i - 1] == "--layout":
            continue
        else:
            (common if cur is None else cur).append(a)
    results = {name: measure([*common, *overrides]) for name, overrides in layouts.items()}
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2:])
