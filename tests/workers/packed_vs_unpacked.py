"""Worker: the summed token loss of demo conversations, packed into one THD row vs each one run on its
own (padded layout, one sequence per forward), through the same model. Rank 0 writes both as JSON.

Also counts device-to-host reads (``.tolist()``, ``.item()``, ``.cpu()``, ``bool(t)``, ``nonzero`` ...)
inside the packed forward and backward, the GPU path's kernel choices forced on the CPU: the varlen
attention (replaced by a dense-mask stand-in with torch's signature, itself free of host reads) and
the RoPE hook. On a GPU each such read stalls the host until the device catches up; the fast path
must have none. The CPU's per-document attention is counted too (it does read: the counter sees them).

    torchrun --nproc-per-node N tests/workers/packed_vs_unpacked.py CKPT OUT.json [hydra overrides...]
"""

import json
import math
import sys
import traceback
from contextlib import contextmanager

import torch

READS = ("tolist", "item", "cpu", "numpy", "nonzero", "__bool__", "__int__", "__float__", "__index__")
# reads of tensors that live on the host on a GPU too: megatron's check that its RNG fork left the CPU
# generator alone (torch.get_rng_state() is a CPU tensor)
HOST_TENSOR_SITES = ("tensor_parallel/random.py",)


def caller() -> str:
    """The innermost frame outside torch, the CPU runtime's function mode and this file."""
    for frame in reversed(traceback.extract_stack()):
        f = frame.filename
        if f != __file__ and "/torch/" not in f and not f.endswith("runtime/cpu.py"):
            return f"{f}:{frame.lineno}"
    return "?"


@contextmanager
def count_host_reads(model, sites: list):
    """Record a call site for every host read of a tensor inside `model`'s forward and in backward."""
    saved = {name: getattr(torch.Tensor, name) for name in READS}
    active = [False]

    def wrap(name, fn):
        def counted(self, *a, **kw):
            if active[0]:
                site = caller()
                if not any(h in site for h in HOST_TENSOR_SITES):
                    sites.append(f"{name} at {site.rsplit('/', 1)[-1]}")
            return fn(self, *a, **kw)
        return counted

    def on(*_):
        active[0] = True

    def off(*_):
        active[0] = False

    hooks = [model.register_forward_pre_hook(on), model.register_forward_hook(off)]
    for name, fn in saved.items():
        setattr(torch.Tensor, name, wrap(name, fn))
    try:
        yield active
    finally:
        for name, fn in saved.items():
            setattr(torch.Tensor, name, fn)
        for h in hooks:
            h.remove()


def dense_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    """Stand-in for torch.nn.attention.varlen.varlen_attn (same signature and layout) without host reads."""
    t = q.size(0)
    idx = torch.arange(t)
    doc = torch.searchsorted(cu_q.long(), idx, right=True)
    allowed = (doc[:, None] == doc[None, :]) & (idx[:, None] >= idx[None, :] if window_size == (-1, 0) else True)
    out = torch.nn.functional.scaled_dot_product_attention(
        *(x.transpose(0, 1).unsqueeze(0) for x in (q, k, v)), attn_mask=allowed, scale=scale, enable_gqa=enable_gqa)
    return out.squeeze(0).transpose(0, 1)


def main(ckpt: str, out: str, overrides: list[str]) -> None:
    import torch.distributed as dist
    from megatron.core import parallel_state as ps

    from tulu_mcore import runtime
    from tulu_mcore.checkpoint.dist import checkpoint_arch, load_model, read_meta
    from tulu_mcore.config.compose import compose
    from tulu_mcore.data.cache import prepare
    from tulu_mcore.data.packing import pack
    from tulu_mcore.data.sources import TINY_TOKENIZER, source_specs
    from tulu_mcore.data.tokenizer import load_tokenizer
    from tulu_mcore.models.factory import build_model
    from tulu_mcore.training.step import lm_forward_step, packed_forward_step

    cfg = compose(["runtime.device=cpu", "model.attention=sdpa", *overrides])
    cfg.model.arch = checkpoint_arch(read_meta(ckpt))
    rt = runtime.setup(cfg, training=False)
    lay = rt.layout
    [model] = build_model(cfg.model.arch, lay, cfg.precision, device="cpu", attention="sdpa", init=False)
    load_model([model], ckpt)
    model.eval()
    tok = load_tokenizer(TINY_TOKENIZER)
    data = prepare(source_specs("builtin:sft-demo"), tok, cache_dir=cfg.data.cache_dir, max_seq_len=128,
                   truncate=True, on_error="strict", seed=0, log=lambda m: None)
    examples = [data.example(i) for i in range(12)]
    multiple = math.lcm(2 * lay.cp if lay.cp > 1 else 1, lay.tp if lay.sp else 1)

    def run(step, batch):
        output, loss_fn = step(iter([batch]), model, reduction="token_mean")
        total, _, report = loss_fn(output)
        sums = report["lm"].clone()
        dist.all_reduce(sums, group=ps.get_context_parallel_group())  # CP ranks hold parts of a row
        return sums[0].item(), sums[1].item()

    with torch.no_grad():
        [row] = pack(examples, 1024, multiple=multiple, pad_id=1)
        packed = run(packed_forward_step, row.as_batch())
        single = [0.0, 0.0]
        for ids, trained in examples:
            n = -(-len(ids) // multiple) * multiple  # pad the sequence for CP's chunks
            tokens = torch.full((1, n), 1, dtype=torch.long)
            tokens[0, : len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            labels = torch.roll(tokens, -1, 1)
            mask = torch.zeros(1, n)
            mask[0, : len(ids) - 1] = torch.as_tensor(trained[1:], dtype=torch.float32)
            loss, count = run(lm_forward_step, {"tokens": tokens, "labels": labels, "loss_mask": mask})
            single[0] += loss
            single[1] += count
    # forward + backward of the packed row: the GPU path forced (fast), then the CPU's own path
    from tulu_mcore.models import kernels

    def fwd_bwd(sites):
        model.zero_grad()
        with count_host_reads(model, sites) as active:
            output, loss_fn = packed_forward_step(iter([row.as_batch()]), model, reduction="sum")
            loss = loss_fn(output)[0]
            active[0] = True
            loss.backward()
            active[0] = False
        return output.detach()

    varlen, supported = kernels._varlen, kernels.varlen_supported
    kernels._varlen, kernels.varlen_supported = (lambda: (dense_varlen, True, True)), (lambda q, p: True)
    try:
        fast_sites = []
        fast_out = fwd_bwd(fast_sites)
    finally:
        kernels._varlen, kernels.varlen_supported = varlen, supported
    cpu_sites = []
    cpu_out = fwd_bwd(cpu_sites)
    if dist.get_rank() == 0:
        with open(out, "w") as f:
            json.dump({"packed": packed, "unpacked": single, "rows_tokens": row.real_tokens,
                       "fast_path_reads": sorted(set(fast_sites)), "fast_path_read_count": len(fast_sites),
                       "cpu_path_read_count": len(cpu_sites),
                       "fast_vs_cpu_max_diff": (fast_out - cpu_out).abs().max().item()}, f)
    runtime.teardown()


if __name__ == "__main__":
    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
