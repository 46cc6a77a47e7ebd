"""Worker (GPU): the packed-row fast path on CUDA. One packed row of several documents through the tiny
model in bf16: forward + backward with torch's sync debug mode set to raise (any device-to-host read in
the model fails the run), and the varlen attention's per-token losses against the per-document loop's.
Writes JSON.

    torchrun --nproc-per-node 1 tests/workers/gpu_packed.py CKPT OUT.json
"""

import json
import sys

import numpy as np
import torch


def main(ckpt: str, out: str) -> None:
    from tulu_mcore import runtime
    from tulu_mcore.checkpoint.dist import checkpoint_arch, load_model, read_meta
    from tulu_mcore.config.compose import compose
    from tulu_mcore.data.packing import pack
    from tulu_mcore.models import kernels
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.training.step import packed_forward

    cfg = compose(["runtime.device=cuda", "precision=bf16", "model.attention=sdpa"])
    cfg.model.arch = checkpoint_arch(read_meta(ckpt))
    rt = runtime.setup(cfg, training=False)
    [model] = build_model(cfg.model.arch, rt.layout, cfg.precision, device="cuda", attention="sdpa", init=False)
    load_model([model], ckpt)
    rng = np.random.default_rng(0)
    docs = [(rng.integers(2, cfg.model.arch.vocab_size, size=n), np.ones(n, dtype=bool)) for n in (37, 180, 5, 64, 91)]
    [row] = pack(docs, 512, pad_id=0)
    batch = row.as_batch()
    res = {"varlen_supported": kernels.varlen_supported(torch.zeros(1, 1, 8, device="cuda", dtype=torch.bfloat16), 0.0)}

    def fwd_bwd(strict: bool):
        model.zero_grad()
        out, _ = packed_forward(batch, model)  # warms up compilation outside the strict pass
        out.float().sum().backward()
        model.zero_grad()
        torch.cuda.synchronize()
        if strict:
            torch.cuda.set_sync_debug_mode("error")
        try:
            out, _ = packed_forward(batch, model)
            out.float().sum().backward()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        grads = torch.cat([p.main_grad.flatten() if hasattr(p, "main_grad") else p.grad.flatten()
                           for p in model.parameters() if p.grad is not None or hasattr(p, "main_grad")])
        return out.detach().float(), grads.float()

    try:
        fast, fast_grads = fwd_bwd(strict=True)
        res["sync_free"] = True
    except RuntimeError as e:  # the sync debug mode's error names the operation
        res["sync_free"], res["sync_error"] = False, str(e)[:500]
        fast, fast_grads = fwd_bwd(strict=False)
    supported = kernels.varlen_supported
    kernels.varlen_supported = lambda q, d: False
    try:
        loop, loop_grads = fwd_bwd(strict=False)
    finally:
        kernels.varlen_supported = supported
    res["max_token_ce_diff"] = (fast - loop).abs().max().item()
    res["mean_token_ce"] = loop.mean().item()
    res["grad_rel_diff"] = ((fast_grads - loop_grads).norm() / loop_grads.norm()).item()
    with open(out, "w") as f:
        json.dump(res, f)
    runtime.teardown()


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2])
