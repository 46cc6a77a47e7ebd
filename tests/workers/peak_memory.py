"""Worker: the peak memory of training steps at one layout (full packed rows of train.seq_length tokens,
one document each), measured as each rank's peak resident memory above what it held before the model
was built; rank 0 writes the largest over ranks, with the planner's estimate for the same config.

    torchrun --nproc-per-node N tests/workers/peak_memory.py OUT.json [hydra overrides...]
"""

import json
import resource
import sys

import psutil


def main(out: str, overrides: list[str]) -> None:
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
    import numpy as np

    rng = np.random.default_rng(0)
    seq = cfg.train.seq_length
    rows = [pack([(rng.integers(2, arch.vocab_size, seq), np.ones(seq, np.uint8))], seq)[0].as_batch()
            for _ in range(lay.num_microbatches)]
    import gc

    gc.collect()
    base = psutil.Process().memory_info().rss
    chunks = build_model(arch, lay, cfg.precision, device="cpu", attention="sdpa",
                         config_overrides={"calculate_per_token_loss": True})
    model = wrap_for_training(chunks, cfg.precision, cfg.optim)
    optimizer = build_optimizer(model, cfg.precision, cfg.optim)
    for _ in range(2):  # the second step has the optimizer states from the first
        train_step(model, optimizer, rows, seq_length=seq, micro_batch_size=1, forward_step=packed_forward_step,
                   reduction="sum")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base  # ru_maxrss: KiB on Linux
    peaks = [None] * dist.get_world_size()
    dist.all_gather_object(peaks, peak)
    if dist.get_rank() == 0:
        plan = estimate(cfg, lay, device="cpu")
        with open(out, "w") as f:
            json.dump({"measured_gib": max(peaks) / 2**30, "estimated_gib": plan.peak_gib, "memory": plan.memory}, f)
    runtime.teardown()


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2:])
