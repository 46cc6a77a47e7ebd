"""Capacity planning before any GPU is allocated: parameters, memory per GPU, FLOPs and step time.

Memory per GPU is counted for the most loaded pipeline stage (the first, which also holds the
embedding and the most micro-batches in flight; the last when it holds more) as:

* **weights**: the stage's parameters (TP-split matrices, replicated norms) in ``params_dtype``;
* **gradients**: megatron's contiguous gradient buffer, fp32 with ``grad_reduce_in_fp32``;
* **optimizer**: fp32 main weights (unless the weights are fp32 already) and Adam's two moments, sharded
  over DP x CP by the distributed optimizer (whole otherwise);
* **activations**: what one Llama layer keeps per token for its backward, written out below (divided by
  TP where TP splits it: everything under sequence parallelism, the matmul-internal parts otherwise),
  times the layers of the stage, times the micro-batches in flight on it (1F1B: PP; interleaved:
  ``(2(PP-1) + (VPP-1)PP + 1) / VPP`` stage-equivalents), for rows of ``train.seq_length / CP`` tokens;
  with ``train.recompute=full`` a layer keeps only its input, plus one layer's activations while it is
  recomputed;
* **logits**: the last stage's vocab-parallel cross entropy on one micro-batch (bf16 logits, their fp32
  copy and the fp32 softmax kept for the backward);
* **framework**: CUDA context, NCCL and allocator reserve on a GPU (none on CPU);
* RL (``recipe=rlvr_*``): the frozen **reference** (weights only) and, for PPO, the **value model**
  (weights, gradients and optimizer state of ``plan.value_arch``, default the policy's architecture).
  The vLLM engine's GPUs (``launcher.engine_nodes``) are counted apart from the trainer's.

FLOPs use Megatron's causal formula (:mod:`tulu_mcore.metrics.flops`); the step time is the step's
FLOPs at the stated MFU, the bubble that of the pipeline schedule.

An RL step with a vLLM engine adds (:func:`rl_phases`):

* **refit**: the policy's weights in the engine's dtype, pushed to every engine GPU (each worker takes
  full tensors and keeps its shard), at ``plan.link_gbps`` into each GPU: bytes / link. The wire only:
  vLLM's layer-wise reload and the trainer's TP gather (NVLink) are not counted.
* **generation**: decoding is memory-bound: each of the ``rlvr.max_new_tokens`` decode steps reads the
  engine GPU's weight shard and the KV cache of its share of the step's sequences (at their mean length)
  at ``plan.engine_hbm_tbps``: a lower bound (no prefill, no sampling overhead, every sequence to full
  length).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field

from omegaconf import OmegaConf

from tulu_mcore.arch import Layout, LlamaArch
from tulu_mcore.config.compose import CONF_DIR, compose
from tulu_mcore.config.durations import parse_duration
from tulu_mcore.config.schema import RunConfig
from tulu_mcore.metrics.flops import PEAK_FLOPS, flops_per_token

GIB = 1 << 30
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
FRAMEWORK_GIB = {"cuda": 4.0, "cpu": 0.0}  # CUDA context + NCCL buffers + allocator reserve


@dataclass
class Plan:
    gpus: int  # the trainer's
    layout: Layout
    params_total: int
    params_per_gpu: int
    memory: dict[str, float] = field(default_factory=dict)  # GiB per GPU, by kind
    capacity_gib: float = 80.0
    tokens_per_step: int = 0
    flops_per_step: float = 0.0
    step_time_s: float = 0.0
    mfu: float = 0.4
    bubble: float = 0.0
    advice: list[str] = field(default_factory=list)
    engine_gpus: int = 0  # a rollout engine's own GPUs (RLVR with vLLM)

    @property
    def peak_gib(self) -> float:
        return sum(self.memory.values())

    @property
    def fits(self) -> bool:
        return self.peak_gib <= self.capacity_gib


def layer_params(arch: LlamaArch, tp: int) -> int:
    """One decoder layer's parameters on one TP rank (norms whole on every rank)."""
    h, f = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    return (h * (q + 2 * kv) + q * h + 3 * h * f) // tp + 2 * h


def stage_params(arch: LlamaArch, lay: Layout, head: str = "lm") -> list[int]:
    """Parameters held by each pipeline rank (all its virtual stages), per TP rank."""
    h, v = arch.hidden_size, arch.vocab_size
    per = [0] * lay.pp
    for seg, n in enumerate(lay.segments):
        per[seg % lay.pp] += n * layer_params(arch, lay.tp)
    per[0] += v * h // lay.tp  # embedding
    out = h if head == "score" else v * h // lay.tp
    if head == "score" or not arch.tie_word_embeddings or lay.pp > 1:  # tied + PP: the last stage keeps a copy
        per[-1] += out
    per[-1] += h  # final norm
    return per


def activation_bytes_per_token(arch: LlamaArch, lay: Layout, act_bytes: int, recompute: str,
                               fused_swiglu: bool = True) -> tuple[float, float]:
    """(bytes one layer keeps per token of a micro-batch for its backward, bytes of one layer's full
    activations per token) on one GPU. `fused_swiglu`: the GPU's fused kernel keeps only its input;
    unfused (CPU), SiLU's output is kept too."""
    h, f = arch.hidden_size, arch.intermediate_size
    q, kv = arch.num_attention_heads * arch.head_dim, arch.num_key_value_heads * arch.head_dim
    t = lay.tp
    sp = lay.sp
    # sequence-wide tensors: norm inputs and the matmul inputs saved in their sequence-split form under
    # SP (megatron re-gathers them in the backward); whole on every TP rank without SP
    seq_wide = 4 * h  # attention norm in, QKV matmul in, MLP norm in, fc1 in
    split = ((q + 2 * kv)  # fused QKV output (V and the pre-RoPE Q, K stay referenced)
             + (q + kv)  # Q, K after RoPE (the core attention's inputs)
             + q  # core attention output (the projection's input)
             + 3 * f  # fc1 output (gate and up, for SwiGLU's backward) and SwiGLU output (fc2's input)
             + (0 if fused_swiglu else f))  # unfused: SiLU(gate), a factor of the product
    full = (seq_wide / t if sp else seq_wide) + split / t
    full *= act_bytes
    full += 4 * arch.num_attention_heads / t  # attention softmax statistics (fp32 per head)
    if recompute == "full":
        kept = h * act_bytes / (t if sp else 1)  # the layer's input
    elif recompute == "selective":  # core attention recomputed: its output is not kept
        kept = full - q * act_bytes / t
    else:
        kept = full
    return kept, full


def in_flight(lay: Layout) -> float:
    """Micro-batches' worth of a whole stage's activations held at once on the first pipeline rank."""
    p, v, m = lay.pp, lay.vpp, lay.num_microbatches
    if p == 1:
        return 1.0
    if v == 1:
        return float(min(p, m))
    return (2 * (p - 1) + (v - 1) * p + 1) / v


def bubble(lay: Layout) -> float:
    """Idle share of a pipeline step: (p - 1) / (v m + p - 1)."""
    p, v, m = lay.pp, lay.vpp, max(lay.num_microbatches, 1)
    return (p - 1) / (v * m + p - 1) if p > 1 else 0.0


def estimate(cfg: RunConfig, lay: Layout, *, device: str = "cuda", capacity_gib: float = 80.0, mfu: float = 0.4,
             tokens_per_sequence: int | None = None) -> Plan:
    arch, t = cfg.model.arch, cfg.train
    head = "score" if cfg.recipe.name == "rm" else "lm"
    pbytes = DTYPE_BYTES[cfg.precision.params_dtype]
    act_bytes = pbytes
    per_stage = stage_params(arch, lay, head)
    total = arch.num_params
    if head == "score":  # the [1, h] head instead of the output layer
        total += arch.hidden_size - (0 if arch.tie_word_embeddings else arch.vocab_size * arch.hidden_size)
    tokens = t.seq_length // lay.cp  # one micro-batch row on this rank
    kept, full = activation_bytes_per_token(arch, lay, act_bytes, t.recompute, fused_swiglu=device == "cuda")
    layers_per_rank = [0] * lay.pp
    for seg, n in enumerate(lay.segments):
        layers_per_rank[seg % lay.pp] += n
    grad_bytes = 4 if cfg.precision.grad_reduce_in_fp32 else pbytes
    opt_bytes = (0 if pbytes == 4 else 4) + 8
    shards = lay.dp * lay.cp if cfg.optim.distributed else 1
    best = None
    for rank in range(lay.pp):
        flight = in_flight(lay) if rank == 0 else max(1.0, in_flight(lay) * (lay.pp - rank) / lay.pp)
        act = layers_per_rank[rank] * tokens * kept * flight
        if t.recompute == "full":
            act += tokens * full  # one layer recomputed at a time
        mem = {
            "weights": per_stage[rank] * pbytes / GIB,
            "gradients": per_stage[rank] * grad_bytes / GIB,
            "optimizer": per_stage[rank] * opt_bytes / shards / GIB,
            "activations": act / GIB,
            "logits": (tokens * (arch.vocab_size // lay.tp) * (pbytes + 8) / GIB
                       if rank == lay.pp - 1 and head == "lm" else 0.0),
            "framework": FRAMEWORK_GIB[device],
        }
        if cfg.recipe.name.startswith("rlvr_"):
            mem["reference"] = per_stage[rank] * pbytes / GIB
        if cfg.recipe.name == "rlvr_ppo":
            v = stage_params(value_arch(cfg), lay, "score")[rank]
            mem["value model"] = v * (pbytes + grad_bytes + opt_bytes / shards) / GIB
        if best is None or sum(mem.values()) > sum(best[1].values()):
            best = (rank, mem)
    rank, mem = best
    seq = tokens_per_sequence or cfg.data.max_seq_len or t.seq_length
    pairs = cfg.recipe.name in ("dpo", "rm")
    step_tokens = t.global_batch_size * seq * (2 if pairs else 1)
    passes = 4 / 3 if cfg.recipe.name == "dpo" and cfg.dpo.reference == "live" else 1.0
    if cfg.recipe.name.startswith("rlvr_"):  # rows of prompt + response: seq bounds one sequence
        step_tokens *= cfg.rlvr.samples_per_prompt
        # GRPO: a training pass + a reference forward; PPO: policy and value model trained ppo_epochs
        # times (the value model counted at the policy's size: an upper bound) + 3 forwards
        passes = 4 / 3 if cfg.recipe.name == "rlvr_grpo" else (2 * cfg.rlvr.ppo_epochs * 3 + 3) / 3
    flops = flops_per_token(arch, seq) * step_tokens * passes
    peak = PEAK_FLOPS[("H100", "fp8" if cfg.precision.fp8 else "bf16")]
    plan = Plan(gpus=lay.world_size, layout=lay, params_total=total, params_per_gpu=per_stage[rank],
                memory=mem, capacity_gib=capacity_gib, tokens_per_step=step_tokens, flops_per_step=flops,
                step_time_s=flops / (lay.world_size * peak * mfu), mfu=mfu, bubble=bubble(lay),
                engine_gpus=engine_gpus(cfg))
    if not plan.fits:
        plan.advice = advice(cfg, lay, mem, capacity_gib)
    return plan


def plan_for(cfg, device: str = "cuda"):
    """The plan of `cfg` on its GPU count (ConfigError for an impossible layout)."""
    from tulu_mcore.config.validate import validate

    gpus = cfg.plan.gpus or cfg.launcher.nodes * cfg.launcher.ranks_per_node
    lay = validate(cfg, gpus, device=device, have_te=True if device == "cuda" else None)
    return estimate(cfg, lay, device=device, capacity_gib=cfg.plan.gpu_memory_gib, mfu=cfg.plan.mfu,
                    tokens_per_sequence=cfg.plan.tokens_per_sequence)


def value_arch(cfg: RunConfig) -> LlamaArch:
    if not cfg.plan.value_arch:
        return cfg.model.arch
    from tulu_mcore.config.compose import model_preset

    return model_preset(cfg.plan.value_arch).arch


def engine_gpus(cfg: RunConfig) -> int:
    """GPUs of the vLLM engine's own nodes (RLVR with rlvr.engine=vllm started by the launcher)."""
    if not cfg.recipe.name.startswith("rlvr_") or cfg.rlvr.engine != "vllm":
        return 0
    return cfg.launcher.engine_nodes * cfg.launcher.ranks_per_node


def rl_phases(cfg: RunConfig, plan: Plan) -> dict[str, float] | None:
    """An RL step with a vLLM engine: refit bytes and seconds, generation seconds (see the module doc)."""
    if not cfg.recipe.name.startswith("rlvr_") or cfg.rlvr.engine != "vllm":
        return None
    arch, r = cfg.model.arch, cfg.rlvr
    wbytes = DTYPE_BYTES[cfg.precision.params_dtype]
    refit_bytes = arch.num_params * wbytes
    replicas = max(plan.engine_gpus // r.vllm.tp, 1)
    sequences = cfg.train.global_batch_size * r.samples_per_prompt / replicas  # per engine replica
    mean_len = (r.max_prompt_tokens or r.max_new_tokens) / 2 + r.max_new_tokens / 2
    kv_per_token = 2 * arch.num_hidden_layers * arch.num_key_value_heads * arch.head_dim * wbytes
    per_decode_step = (refit_bytes + sequences * mean_len * kv_per_token) / r.vllm.tp  # bytes read per GPU
    return {"refit_bytes": refit_bytes, "refit_s": refit_bytes / (cfg.plan.link_gbps * 1e9 / 8),
            "generation_s": r.max_new_tokens * per_decode_step / (cfg.plan.engine_hbm_tbps * 1e12)}


def advice(cfg: RunConfig, lay: Layout, mem: dict[str, float], capacity: float) -> list[str]:
    """What would bring the peak under the capacity, largest term first."""
    tips = []
    order = sorted(mem.items(), key=lambda kv: -kv[1])
    for kind, gib in order:
        if kind == "activations" and cfg.train.recompute != "full":
            tips.append(f"activations {gib:.1f} GiB: train.recompute=full, or a shorter train.seq_length, or "
                        "context parallelism (parallel.cp)")
        elif kind in ("weights", "gradients"):
            tips.append(f"{kind} {gib:.1f} GiB: more tensor or pipeline parallelism (parallel.tp / parallel.pp)")
        elif kind == "optimizer":
            tips.append(f"optimizer {gib:.1f} GiB: " + ("more data-parallel ranks (more GPUs)" if cfg.optim.distributed
                                                         else "optim.distributed=true (shards it over DP)"))
        elif kind == "logits" and gib > 1:
            tips.append(f"logits {gib:.1f} GiB: more tensor parallelism or a shorter train.seq_length")
    tips.append(f"the peak must fit {capacity:g} GiB (plan.gpu_memory_gib)")
    return tips


def run_length(plan: Plan, cfg: RunConfig) -> list[str]:
    """The whole run's wall time at the plan's step time, the Slurm jobs it takes at launcher.time, and a
    warning when one step or one save interval does not fit a job."""
    lc, step = cfg.launcher, plan.step_time_s
    limit = parse_duration(lc.time, "launcher.time", slurm=True)
    usable = max(limit - lc.signal_seconds, 1.0)  # the trainers stop and save at the warning
    rl = " (training only: RL generation is not counted)" if cfg.recipe.name.startswith("rlvr") else ""
    lines = []
    if cfg.train.max_steps:
        total = cfg.train.max_steps * step
        jobs = math.ceil(total / usable)
        lines.append(f"run: {cfg.train.max_steps:,} steps x {step:.1f} s = {total / 3600:.1f} h{rl}; at "
                     f"launcher.time={lc.time}: {jobs} job(s), {jobs - 1} requeue(s)"
                     + (f" (more than launcher.max_restarts={lc.max_restarts}: raise it or launcher.time)"
                        if jobs - 1 > lc.max_restarts else ""))
    else:
        lines.append(f"run: train.epochs={cfg.train.epochs} over the data (steps = examples / batch x epochs; set "
                     f"train.max_steps for the run's wall time){rl}")
    if step + 60 > lc.signal_seconds:  # the trainers act on the warning at a step's (or RL phase's) end
        lines.append(f"note: launcher.signal_seconds={lc.signal_seconds} is shorter than a step ({step:.0f} s) and a "
                     f"save: Slurm's warning may come too late to act on, so the run's own time-limit check (the "
                     f"job's end time) saves before the limit; launcher.signal_seconds={math.ceil(step + 120)} would "
                     "make the warning a second line")
    if step > usable:
        lines.append(f"warning: one step ({step:.0f} s) is longer than launcher.time={lc.time} less the "
                     f"{lc.signal_seconds} s warning: raise launcher.time")
    elif cfg.train.save_interval * step > usable:
        lines.append(f"warning: a save every {cfg.train.save_interval} steps ({cfg.train.save_interval * step / 3600:.1f} h)"
                     f" is longer than launcher.time={lc.time}: the run saves on Slurm's warning or at run.time_limit "
                     "anyway; lower train.save_interval to lose less on a crash")
    return lines


def report(plan: Plan, cfg: RunConfig) -> str:
    lay = plan.layout
    lines = [
        f"model {cfg.model.name}: {plan.params_total:,} parameters; {plan.params_per_gpu:,} on the most loaded GPU",
        f"layout: {plan.gpus} GPUs = TP{lay.tp} x PP{lay.pp}" + (f" (VPP{lay.vpp})" if lay.vpp > 1 else "")
        + f" x CP{lay.cp} x DP{lay.dp}" + (", sequence parallel" if lay.sp else "")
        + f"; {lay.num_microbatches} micro-batch(es) per step per DP rank, pipeline bubble {plan.bubble:.1%}",
        "memory per GPU (GiB): " + ", ".join(f"{k} {v:.2f}" for k, v in plan.memory.items())
        + f"; peak {plan.peak_gib:.2f} of {plan.capacity_gib:g}",
        f"step: {plan.tokens_per_step:,} tokens, {plan.flops_per_step / 1e15:.1f} PFLOP; "
        f"{plan.step_time_s:.2f} s at {plan.mfu * 100:g}% MFU",
    ]
    if plan.engine_gpus:
        lines.append(f"GPUs: {plan.gpus} for the trainer + {plan.engine_gpus} for the vLLM engine "
                     f"(rlvr.vllm.tp={cfg.rlvr.vllm.tp}) = {plan.gpus + plan.engine_gpus}")
    rl = rl_phases(cfg, plan)
    if rl is not None:
        train, gen, refit = plan.step_time_s, rl["generation_s"], rl["refit_s"]
        step = (max(gen, train) if cfg.rlvr.async_generation else gen + train) + refit
        lines.append(f"RL step: generation >= {gen:.1f} s (rlvr.max_new_tokens={cfg.rlvr.max_new_tokens} decode steps "
                     f"at {cfg.plan.engine_hbm_tbps:g} TB/s per engine GPU) + training {train:.1f} s + refit "
                     f"{refit:.2f} s ({rl['refit_bytes'] / 1e9:.1f} GB into every engine GPU at "
                     f"{cfg.plan.link_gbps:g} Gb/s) = {step:.1f} s"
                     + (" (generation overlaps training: rlvr.async_generation)" if cfg.rlvr.async_generation else ""))
    lines += run_length(plan, cfg)
    lines += [f"to fit: {a}" for a in plan.advice]
    if rl is not None:
        lines.append(f"refit_bytes={rl['refit_bytes']} refit_s={rl['refit_s']:.3f}")
    lines.append(f"params_total={plan.params_total}")
    lines.append(f"fits={'true' if plan.fits else 'false'} peak_gib={plan.peak_gib:.2f} "
                 f"gpus={plan.gpus + plan.engine_gpus}")
    return "\n".join(lines)



# --- A bare question -------------------------------------------------------------------------------------
# `tulu-plan model=llama3_1_405b` names a model and little else. The root config's defaults suit the tiny
# model on CPU (fp32 weights, 64-token rows, a batch of 4): they answer no question about a real model,
# and often fit no layout at all. So tulu-plan fills in what a question without `experiment=` leaves out,
# from the model's golden experiment (conf/experiment) when it has one, else Tülu 3's SFT numbers on the
# default node, and prints every value it assumed. Only tulu-plan does this: tulu-train and tulu-launch
# (and plan_for above) use exactly the config they are given.

TULU3_SFT = {"train.seq_length": 4096, "train.global_batch_size": 128}  # Tülu 3 8B / 70B SFT
# Recipes whose runs have the same kind of rows: conversations; pairs in a row; a policy beside a rollout
# engine
FAMILY = {"none": "sft", "sft": "sft", "dpo": "pairs", "rm": "pairs", "rlvr_grpo": "rl", "rlvr_ppo": "rl"}
# What a golden experiment lends a question, by how near its recipe is to the question's: "any" (the job's
# size: precision, lengths, layout, GPUs), "family" (the same kind of rows and engine: an RL run's rollout
# lengths and whether generation overlaps training too), "exact" (the
# recipe's own numbers: an RL run's samples and passes, PPO's value model). "parallel" is the layout,
# lent whole or not at all (its keys only make sense together).
LENT = (("precision", "any"), ("train.seq_length", "any"), ("data.max_seq_len", "family"),
        ("train.global_batch_size", "any"), ("train.recompute", "any"), ("parallel", "any"),
        ("plan.gpus", "any"),
        ("rlvr.engine", "family"), ("rlvr.vllm.tp", "family"), ("launcher.engine_nodes", "family"),
        ("rlvr.samples_per_prompt", "exact"), ("rlvr.ppo_epochs", "exact"), ("rlvr.minibatches", "exact"),
        ("rlvr.max_new_tokens", "family"), ("rlvr.max_prompt_tokens", "family"), ("rlvr.async_generation", "family"),
        ("plan.value_arch", "exact"), ("train.max_steps", "exact"), ("train.save_interval", "exact"))
# The keys of a question that say a lent key: the launcher's size is a GPU count too; a data.max_seq_len
# lent without the row it was sized for could contradict the user's own train.seq_length
SAID_BY = {"plan.gpus": ("plan.gpus", "launcher.nodes", "launcher.ranks_per_node"),
           "data.max_seq_len": ("data.max_seq_len", "train.seq_length")}


@dataclass
class Assumption:
    key: str  # a config key, or a group ("precision", "recipe", "parallel")
    value: object
    source: str  # where the value comes from

    def overrides(self) -> list[str]:
        if self.key == "parallel" and isinstance(self.value, dict):  # a layout's keys
            return [f"parallel.{k}={override_value(v)}" for k, v in self.value.items()]
        return [f"{self.key}={override_value(self.value)}"]

    def line(self) -> str:
        change = {"parallel": "parallel.*", "precision": "precision=...",
                  "recipe": "recipe=dpo|rm|rlvr_grpo|rlvr_ppo"}.get(self.key, self.key)
        return f"assumed: {' '.join(self.overrides())} ({self.source}; set {change} to change)"


def override_value(v) -> str:
    """`v` in Hydra's override syntax."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(override_value(x) for x in v) + "]"
    return str(v)


def said(argv: list[str], key: str) -> bool:
    """Whether overrides `argv` set `key` (or a key standing for it, SAID_BY), a section holding it, or a
    key inside it (`precision=fp32` and `precision.params_dtype=fp32` both say the precision)."""
    given = {a.lstrip("+~").split("=", 1)[0] for a in argv}
    return any(g == k or g.startswith(k + ".") or k.startswith(g + ".")
               for g in given for k in SAID_BY.get(key, (key,)))


def _groups(raw) -> dict[str, str]:
    """An experiment's group choices: `- override /precision: bf16` -> {"precision": "bf16"}."""
    return {k.split("/")[-1]: v for entry in raw.get("defaults", []) if not isinstance(entry, str)
            for k, v in entry.items()}


def golden_experiments() -> dict[tuple[str, str], str]:
    """(model preset, recipe) -> the experiment of conf/experiment made for it."""
    found = {}
    for path in sorted((CONF_DIR / "experiment").glob("*.yaml")):
        groups = _groups(OmegaConf.load(path))
        if "model" in groups and "recipe" in groups:
            found.setdefault((groups["model"], groups["recipe"]), path.stem)
    return found


def nearest_experiment(model: str, recipe: str) -> tuple[str, str] | None:
    """(its recipe, its name): the golden experiment of `model` for `recipe`, else one of the recipe's
    family, else the model's SFT; None for a model without one."""
    golden = golden_experiments()
    family = [r for r in FAMILY if FAMILY[r] == FAMILY[recipe] and r != recipe]
    for r in (recipe, *family, "sft"):
        if (model, r) in golden:
            return r, golden[(model, r)]
    return None


def lent_values(name: str) -> dict[str, object]:
    """The values of LENT that experiment `name` sets ("plan.gpus": the GPU count it is sized for)."""
    raw = OmegaConf.load(CONF_DIR / "experiment" / f"{name}.yaml")
    out: dict[str, object] = {}
    absent = object()
    for key, _ in LENT:
        if key == "precision":
            value = _groups(raw).get("precision", absent)
        elif key == "plan.gpus" and OmegaConf.select(raw, key) is None and "launcher" in raw:
            value = raw.launcher.get("nodes", 1) * raw.launcher.get("ranks_per_node", 8)
        else:
            value = OmegaConf.select(raw, key, default=absent)
        if value is not absent:
            out[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    return out


def assume(argv: list[str], cfg: RunConfig) -> list[Assumption]:
    """What a question without `experiment=` leaves out, filled in (`cfg`: the question as composed)."""
    if said(argv, "experiment"):
        return []
    out = []
    recipe = cfg.recipe.name
    if recipe == "none" and not said(argv, "recipe"):  # recipe=none trains nothing: plan Tülu's first stage
        recipe = "sft"
        out.append(Assumption("recipe", "sft", "a question without a recipe plans SFT"))
    nearest = nearest_experiment(cfg.model.name, recipe)
    if nearest:
        their_recipe, name = nearest
        reach = ("any", "family", "exact") if their_recipe == recipe else (
            ("any", "family") if FAMILY[their_recipe] == FAMILY[recipe] else ("any",))
        source = f"experiment={name}"
        if their_recipe != recipe:
            source += f", the nearest to recipe={recipe}"
        lent = lent_values(name)
        out += [Assumption(key, lent[key], source) for key, how in LENT
                if how in reach and key in lent and not said(argv, key)]
        return out
    tulu3 = f"Tülu 3 SFT; no experiment for model={cfg.model.name}"
    defaults = [("precision", "bf16", "training on GPUs"),
                *[(key, value, tulu3) for key, value in TULU3_SFT.items()],
                ("train.recompute", cfg.train.recompute, "the default"),
                ("parallel", "dp", "the default"),
                ("plan.gpus", cfg.launcher.nodes * cfg.launcher.ranks_per_node,
                 "the default launcher.nodes x launcher.ranks_per_node")]
    out += [Assumption(key, value, source) for key, value, source in defaults if not said(argv, key)]
    return out


def question(argv: list[str]) -> tuple[RunConfig, list[str]]:
    """tulu-plan's config for overrides `argv`, and the lines that say what it assumed (none when `argv`
    names an experiment or leaves nothing out)."""
    cfg = compose(argv)
    assumed = assume(argv, cfg)
    if not assumed:
        return cfg, []

    def asked() -> list[str]:  # the question in full: the user's overrides, then the assumed ones
        return argv + [o for a in assumed for o in a.overrides()]

    cfg = compose(asked())
    gpus = cfg.plan.gpus or cfg.launcher.nodes * cfg.launcher.ranks_per_node
    mp = cfg.parallel.tp * cfg.parallel.pp * cfg.parallel.cp
    layout = next((a for a in assumed if a.key == "parallel"), None)
    if layout is not None and gpus % mp:
        # an experiment's layout on the user's own GPU count, which it does not divide: refusing it would
        # refuse a layout the user never chose, so plan the default one (the user's own layout is refused)
        layout.source = (f"the default; {layout.source} has TP x PP x CP = {mp}, which does not divide "
                         f"{gpus} GPUs")
        layout.value = "dp"
        cfg = compose(asked())
        mp = 1
    p, t = cfg.parallel, cfg.train
    batch = next((a for a in assumed if a.key == "train.global_batch_size"), None)
    if batch is not None and gpus % mp == 0:  # (an impossible layout is refused as such)
        # an assumed batch follows the layout: whole micro-batches on every DP rank, a multiple of PP of
        # them when interleaved
        step = t.micro_batch_size * gpus // mp * (p.pp if p.vpp > 1 else 1)
        rounded = -(-t.global_batch_size // step) * step
        if rounded != t.global_batch_size:
            batch.source += (f"; {t.global_batch_size} rounded up to a multiple of micro_batch_size x DP"
                             + (" x PP" if p.vpp > 1 else "") + f" = {step}")
            batch.value = t.global_batch_size = rounded
    full = " ".join(["tulu-plan", *map(shlex.quote, asked())])
    return cfg, [a.line() for a in assumed] + [f"the question in full (change any KEY=VALUE; --help): {full}"]
