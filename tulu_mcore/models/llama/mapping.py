"""Hugging Face Llama <-> megatron-core HybridModel parameters: one declarative table, two directions.

Each rule ties HF tensors to one megatron parameter of a model chunk and names how that parameter is
split over tensor-parallel ranks:

=========== ====================================================================================
vocab       rows split over TP (VocabParallelEmbedding, the output layer)
column      rows split over TP (ColumnParallelLinear)
row         columns split over TP (RowParallelLinear)
replicated  every TP rank holds the whole tensor (norms)
qkv         q/k/v fused and interleaved per query group: [q heads of group g; k_g; v_g] for each g;
            a TP rank holds whole groups (num_key_value_heads % TP == 0)
gated       gate and up fused as [gate_r; up_r] on TP rank r (global layout [gate; up])
=========== ====================================================================================

Decoder layer i of HF is HybridModel layers 2j (attention) and 2j+1 (MLP) of the chunk that holds it,
j being its index within that chunk. The norm names differ between the local spec and the TE spec
(fused into the following linear); a rule lists both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from tulu_mcore.arch import LlamaArch


@dataclass(frozen=True)
class Rule:
    hf: tuple[str, ...]  # HF names; "{i}" = decoder layer index
    mcore: tuple[str, ...]  # candidate names in a chunk; "{a}"/"{m}" = attention / MLP layer index
    kind: str


EMBEDDING = Rule(("model.embed_tokens.weight",), ("embedding.word_embeddings.weight",), "vocab")
FINAL_NORM = Rule(("model.norm.weight",), ("decoder.final_norm.weight",), "replicated")
LM_HEAD = Rule(("lm_head.weight",), ("output_layer.weight",), "vocab")
# a reward model's scalar head (HF LlamaForSequenceClassification, num_labels=1): [1, hidden] on every
# TP rank, in place of the output layer
SCORE = Rule(("score.weight",), ("output_layer.weight",), "replicated")
HEADS = ("lm", "score")

_L = "model.layers.{i}."
LAYER_RULES = (
    Rule(
        (_L + "input_layernorm.weight",),
        ("decoder.layers.{a}.input_layernorm.weight",
         "decoder.layers.{a}.self_attention.linear_qkv.layer_norm_weight"),
        "replicated",
    ),
    Rule(
        (_L + "self_attn.q_proj.weight", _L + "self_attn.k_proj.weight", _L + "self_attn.v_proj.weight"),
        ("decoder.layers.{a}.self_attention.linear_qkv.weight",),
        "qkv",
    ),
    Rule((_L + "self_attn.o_proj.weight",), ("decoder.layers.{a}.self_attention.linear_proj.weight",), "row"),
    Rule(
        (_L + "post_attention_layernorm.weight",),
        ("decoder.layers.{m}.pre_mlp_layernorm.weight", "decoder.layers.{m}.mlp.linear_fc1.layer_norm_weight"),
        "replicated",
    ),
    Rule(
        (_L + "mlp.gate_proj.weight", _L + "mlp.up_proj.weight"),
        ("decoder.layers.{m}.mlp.linear_fc1.weight",),
        "gated",
    ),
    Rule((_L + "mlp.down_proj.weight",), ("decoder.layers.{m}.mlp.linear_fc2.weight",), "row"),
)


def layer_names(rule: Rule, layer: int, local_index: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(HF names, megatron candidates) of `rule` for decoder layer `layer` at chunk index `local_index`."""
    hf = tuple(n.format(i=layer) for n in rule.hf)
    mc = tuple(n.format(a=2 * local_index, m=2 * local_index + 1) for n in rule.mcore)
    return hf, mc


def units(n_chunks: int, arch: LlamaArch, pp: int, segments: list[int], head: str = "lm"):
    """Every megatron parameter in HF checkpoint order, with where it lives:
    (pp rank, chunk index on that rank, rule, HF names, megatron candidate names).
    `segments` are decoder layers per pipeline segment (segment = chunk index * pp + pp rank);
    `head` is the language-model head ("lm") or a reward model's scalar head ("score")."""
    yield 0, 0, EMBEDDING, EMBEDDING.hf, EMBEDDING.mcore
    layer = 0
    for seg, n in enumerate(segments):
        vp, pp_rank = divmod(seg, pp)
        for j in range(n):
            for rule in LAYER_RULES:
                hf, mc = layer_names(rule, layer, j)
                yield pp_rank, vp, rule, hf, mc
            layer += 1
    yield pp - 1, n_chunks - 1, FINAL_NORM, FINAL_NORM.hf, FINAL_NORM.mcore
    if head == "score":
        yield pp - 1, n_chunks - 1, SCORE, SCORE.hf, SCORE.mcore
    elif not arch.tie_word_embeddings:
        yield pp - 1, n_chunks - 1, LM_HEAD, LM_HEAD.hf, LM_HEAD.mcore


def hf_shapes(arch: LlamaArch, head: str = "lm") -> dict[str, tuple[int, ...]]:
    """Every tensor of an HF LlamaForCausalLM (head "lm") or LlamaForSequenceClassification (head
    "score") checkpoint with its shape, in checkpoint order."""
    h, f, d = arch.hidden_size, arch.intermediate_size, arch.head_dim
    shapes = {"model.embed_tokens.weight": (arch.vocab_size, h)}
    for i in range(arch.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update({
            p + "input_layernorm.weight": (h,),
            p + "self_attn.q_proj.weight": (arch.num_attention_heads * d, h),
            p + "self_attn.k_proj.weight": (arch.num_key_value_heads * d, h),
            p + "self_attn.v_proj.weight": (arch.num_key_value_heads * d, h),
            p + "self_attn.o_proj.weight": (h, arch.num_attention_heads * d),
            p + "post_attention_layernorm.weight": (h,),
            p + "mlp.gate_proj.weight": (f, h),
            p + "mlp.up_proj.weight": (f, h),
            p + "mlp.down_proj.weight": (h, f),
        })
    shapes["model.norm.weight"] = (h,)
    if head == "score":
        shapes["score.weight"] = (1, h)
    elif not arch.tie_word_embeddings:
        shapes["lm_head.weight"] = (arch.vocab_size, h)
    return shapes


# ------------------------------------------------------------------------------ QKV interleave
def merge_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads_per_group: int, head_dim: int):
    """HF q [g*hpg*d, H], k/v [g*d, H] -> megatron fused [g*(hpg+2)*d, H], interleaved per group."""
    hidden = q.shape[-1]
    g = k.shape[0] // head_dim
    q = q.reshape(g, heads_per_group * head_dim, hidden)
    k = k.reshape(g, head_dim, hidden)
    v = v.reshape(g, head_dim, hidden)
    return torch.cat([q, k, v], dim=1).reshape(-1, hidden)


def split_qkv(qkv: torch.Tensor, heads_per_group: int, head_dim: int):
    hidden = qkv.shape[-1]
    x = qkv.reshape(-1, (heads_per_group + 2) * head_dim, hidden)
    q, k, v = torch.split(x, [heads_per_group * head_dim, head_dim, head_dim], dim=1)
    return q.reshape(-1, hidden), k.reshape(-1, hidden), v.reshape(-1, hidden)


# ------------------------------------------------------------------------------ HF -> local shard
class Reader(Protocol):
    def shape(self, name: str) -> tuple[int, ...]: ...

    def read(self, name: str, dim: int | None = None, start: int = 0, stop: int | None = None
             ) -> torch.Tensor: ...


def hf_to_local(rule: Rule, hf_names: tuple[str, ...], reader: Reader, tp_rank: int, tp_size: int,
                arch: LlamaArch) -> torch.Tensor:
    """This TP rank's shard of the megatron parameter of `rule`, reading only the rows/columns it
    needs (so each rank of a large conversion touches only its slice)."""
    kind, read = rule.kind, reader.read
    if kind == "replicated":
        return read(hf_names[0])
    if kind == "row":
        n = reader.shape(hf_names[0])[1]
        return read(hf_names[0], 1, *_part(n, tp_rank, tp_size))
    if kind in ("vocab", "column"):
        n = reader.shape(hf_names[0])[0]
        return read(hf_names[0], 0, *_part(n, tp_rank, tp_size))
    if kind == "gated":
        parts = [read(n, 0, *_part(arch.intermediate_size, tp_rank, tp_size)) for n in hf_names]
        return torch.cat(parts, dim=0)
    if kind == "qkv":
        d, g = arch.head_dim, arch.num_key_value_heads
        hpg = arch.num_attention_heads // g
        g0, g1 = _part(g, tp_rank, tp_size)  # this rank's query groups
        q = read(hf_names[0], 0, g0 * hpg * d, g1 * hpg * d)
        k = read(hf_names[1], 0, g0 * d, g1 * d)
        v = read(hf_names[2], 0, g0 * d, g1 * d)
        return merge_qkv(q, k, v, hpg, d)
    raise ValueError(f"unknown rule kind {kind!r}")


def _part(n: int, rank: int, size: int) -> tuple[int, int]:
    step = n // size
    return rank * step, (rank + 1) * step


# ------------------------------------------------------------------------------ TP shards -> HF
def shards_to_hf(rule: Rule, hf_names: tuple[str, ...], shards: list[torch.Tensor],
                 arch: LlamaArch) -> list[tuple[str, torch.Tensor]]:
    """Full HF tensors from the TP shards of one megatron parameter (in TP-rank order)."""
    kind = rule.kind
    if kind == "replicated":
        return [(hf_names[0], shards[0])]
    if kind == "row":
        return [(hf_names[0], torch.cat(shards, dim=1) if len(shards) > 1 else shards[0])]
    if kind in ("vocab", "column"):
        return [(hf_names[0], torch.cat(shards, dim=0) if len(shards) > 1 else shards[0])]
    if kind == "gated":
        halves = [s.chunk(2, dim=0) for s in shards]
        if len(shards) == 1:
            return [(hf_names[0], halves[0][0]), (hf_names[1], halves[0][1])]
        gate = torch.cat([h[0] for h in halves], dim=0)
        up = torch.cat([h[1] for h in halves], dim=0)
        return [(hf_names[0], gate), (hf_names[1], up)]
    if kind == "qkv":
        full = torch.cat(shards, dim=0) if len(shards) > 1 else shards[0]
        hpg = arch.num_attention_heads // arch.num_key_value_heads
        return list(zip(hf_names, split_qkv(full, hpg, arch.head_dim)))
    raise ValueError(f"unknown rule kind {kind!r}")


def find_param(params: dict[str, torch.nn.Parameter], candidates: tuple[str, ...]):
    for name in candidates:
        if name in params:
            return name, params[name]
    return None, None
