"""Worker: the local core attention at CP=2 (sbhd and packed THD) against attention over the whole
sequence written out here; forward outputs and (SDPA; flex has no CPU backward) q/k/v gradients.
Rank 0 writes the max errors as JSON.

    torchrun --nproc-per-node 2 tests/workers/attention_cp.py OUT.json
"""

import json
import math
import sys

import torch
import torch.distributed as dist

HQ, HKV, D = 4, 2, 8


def reference(q, k, v, allowed):
    """q [s, hq, d], k/v [s, hkv, d], allowed [s, s] -> [s, hq*d] (differentiable)."""
    rep = HQ // HKV
    k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    scores = torch.einsum("shd,thd->hst", q, k) / math.sqrt(D)
    scores = scores.masked_fill(~allowed, float("-inf"))
    return torch.einsum("hst,thd->shd", torch.softmax(scores, dim=-1), v).reshape(q.shape[0], -1)


def main(out_path):
    from megatron.core import parallel_state as ps
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.enums import AttnMaskType
    from megatron.core.transformer.transformer_config import TransformerConfig

    from tulu_mcore.models.attention import FlexCoreAttention, LocalCoreAttention
    from tulu_mcore.models.context_parallel import local_positions
    from tulu_mcore.runtime import cpu

    cpu.install()
    if not dist.is_initialized():  # a test pool's earlier job may have started it
        dist.init_process_group("gloo")
    ps.initialize_model_parallel(context_parallel_size=2)
    rank = ps.get_context_parallel_rank()
    cfg = TransformerConfig(num_layers=1, hidden_size=HQ * D, num_attention_heads=HQ, num_query_groups=HKV,
                            kv_channels=D, context_parallel_size=2, attention_dropout=0.0)
    g = torch.Generator().manual_seed(0)
    errors = {}
    for name, cu_padded in (("sbhd", None), ("thd", torch.tensor([0, 8, 12, 24], dtype=torch.int32))):
        s = 24
        q, k, v = (torch.randn(s, h, D, generator=g, dtype=torch.float64).float() for h in (HQ, HKV, HKV))
        grad_out = torch.randn(s, HQ * D, generator=g)
        pos = torch.arange(s)
        allowed = pos[:, None] >= pos[None, :]
        if cu_padded is not None:
            doc = torch.searchsorted(cu_padded.long(), pos, right=True)
            allowed &= doc[:, None] == doc[None, :]
        full = [t.clone().requires_grad_() for t in (q, k, v)]
        ref_out = reference(*full, allowed)
        ref_out.backward(grad_out)
        idx = local_positions(s, 2, rank, cu_padded)
        for cls in (LocalCoreAttention, FlexCoreAttention):
            mod = cls(config=cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
            grads = cls is LocalCoreAttention  # torch's flex_attention has no backward on CPU
            local = [t[idx].clone().requires_grad_(grads) for t in (q, k, v)]
            if cu_padded is None:  # sbhd wants a batch dim: [s, b=1, h, d]
                out = mod(*(t.unsqueeze(1) for t in local), None, attn_mask_type=AttnMaskType.causal)[:, 0]
            else:  # PackedSeqParams carry the global (unsplit) boundaries on every CP rank
                psp = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu_padded, cu_seqlens_kv=cu_padded,
                                      cu_seqlens_q_padded=cu_padded, cu_seqlens_kv_padded=cu_padded,
                                      max_seqlen_q=12, max_seqlen_kv=12)
                out = mod(*local, None, attn_mask_type=AttnMaskType.causal, packed_seq_params=psp)
            grad_err = 0.0
            if grads:
                out.backward(grad_out[idx])
                grad_err = max((lt.grad - ft.grad[idx]).abs().max().item() for lt, ft in zip(local, full))
            err = torch.tensor([(out - ref_out[idx]).abs().max().item(), grad_err])
            dist.all_reduce(err, op=dist.ReduceOp.MAX)
            errors[f"{name}_{cls.impl}"] = {"out": err[0].item(), "grad": err[1].item() if grads else None}
    if dist.get_rank() == 0:
        with open(out_path, "w") as f:
            json.dump(errors, f)
    ps.destroy_model_parallel()


if __name__ == "__main__":
    main(sys.argv[1])
