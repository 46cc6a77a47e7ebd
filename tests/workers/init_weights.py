"""Worker: build the tiny model with random initialisation at one layout (same seed everywhere) and
write, from rank 0, the full HF-named weights; also check that data-parallel replicas are identical.

    torchrun --nproc-per-node N tests/workers/init_weights.py OUT.pt [hydra overrides...]
"""

import sys

import torch


def main(out: str, overrides: list[str]) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from tulu_mcore import runtime
    from tulu_mcore.config.compose import compose
    from tulu_mcore.convert.export import export_hf_weights
    from tulu_mcore.models.factory import build_model

    cfg = compose(["runtime.device=cpu", "model.attention=sdpa", *overrides])
    rt = runtime.setup(cfg, training=False)
    chunks = build_model(cfg.model.arch, rt.layout, cfg.precision, device=rt.device, attention="sdpa")
    # every data-parallel replica must hold the same weights: compare checksums over the DP group
    local = torch.stack([p.detach().double().sum() for c in chunks for p in c.parameters()])
    hi, lo = local.clone(), local.clone()
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=ps.get_data_parallel_group())
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=ps.get_data_parallel_group())
    weights = {n: t.clone() for bucket in export_hf_weights(chunks, cfg.model.arch) for n, t in bucket}
    if dist.get_rank() == 0:
        torch.save({"weights": weights, "replica_spread": (hi - lo).abs().max().item()}, out)
    runtime.teardown()


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2:])
