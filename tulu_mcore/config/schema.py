"""The typed schema of a run: what ``conf/`` composes into, and what every entry point receives.

Each section is a dataclass; the composed YAML is merged into it, so a misspelled key or a value of
the wrong type fails at composition. Sizes that follow from others (data-parallel size, micro-batches per
step) are derived once, in :func:`tulu_mcore.config.validate.validate`, never stored here.
"""

from dataclasses import dataclass, field
from omegaconf import MISSING

from tulu_mcore.models.llama.arch import LlamaArch

DTYPES = ("fp32", "bf16", "fp16")
FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
ATTENTION_BACKENDS = ("auto", "te", "sdpa", "flex")
DEVICES = ("auto", "cuda", "cpu")


@dataclass
class ModelConfig:
    name: str = "tiny"
    arch: LlamaArch = MISSING
    # Core attention: `te` (Transformer Engine spec, GPU), `sdpa` / `flex` (the project's own core
    # attention on the local spec: causal, GQA, packed THD, context parallel). `auto`: te when
    # Transformer Engine is importable on a CUDA device, else sdpa.
    attention: str = "auto"


@dataclass
class ParallelConfig:
    tp: int = 1  # tensor parallel: splits every matmul over tp ranks (keep within one NVLink node)
    pp: int = 1  # pipeline parallel: splits the layers into pp stages
    vpp: int = 1  # virtual stages per pipeline rank (interleaved 1F1B); 1 = off
    cp: int = 1  # context parallel: splits each sequence into 2*cp load-balanced chunks
    sp: bool = False  # sequence parallel: shards norms/dropout activations over tp (needs tp > 1)
    # Decoder layers per pipeline segment, pp*vpp entries in segment order (vpp-major). Default: even.
    pipeline_layout: list[int] | None = None


@dataclass
class PrecisionConfig:
    name: str = "fp32"
    params_dtype: str = "fp32"  # fp32 | bf16 | fp16: the dtype of weights and activations
    grad_reduce_in_fp32: bool = True  # reduce gradients in fp32 (robust; 2x the grad-buffer memory)
    # FP8 (needs Transformer Engine and a Hopper-or-newer GPU): e4m3 | hybrid (e4m3 fwd, e5m2 bwd)
    fp8: str | None = None
    fp8_recipe: str = "delayed"  # delayed | tensorwise | blockwise | mxfp8
    fp8_param: bool = False  # keep parameters in fp8 and all-gather them in fp8 (saves memory)
    first_last_layers_bf16: bool = False  # keep the first/last layers out of fp8 (stability)
    num_layers_at_start_in_bf16: int = 1
    num_layers_at_end_in_bf16: int = 1


@dataclass
class RuntimeConfig:
    device: str = "auto"  # auto | cuda | cpu (cpu runs megatron-core through the CPU runtime, gloo)
    seed: int = 1234


@dataclass
class TrainConfig:
    seq_length: int = 64  # tokens per sequence (packed micro-batch length)
    micro_batch_size: int = 1  # sequences per micro-batch per data-parallel rank
    global_batch_size: int = 4  # sequences per optimizer step, all ranks together


@dataclass
class OptimConfig:
    lr: float = 1e-5
    weight_decay: float = 0.0  # decoupled (AdamW)
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    clip_grad: float = 1.0  # global gradient-norm clipping; 0 disables
    # Shard fp32 main weights and Adam states over data-parallel ranks (ZeRO-1): ~12 bytes/param
    # of optimizer memory divided by DP.
    distributed: bool = True


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

