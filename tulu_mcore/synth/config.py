"""The configs of ``tulu-synth``'s verbs: ``synth/conf/<verb>.yaml`` composed with Hydra overrides
(``KEY=VALUE``; ``--config-dir DIR`` for the user's own ``<verb>.yaml``) and checked against the
dataclasses here: an unknown key or a wrong type is one error naming it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tulu_mcore.config.schema import LauncherConfig
from tulu_mcore.errors import ConfigError

CONF_DIR = Path(__file__).resolve().parent / "conf"
VERBS = ("personas", "preferences", "rlvr")


@dataclass
class VllmOptions:
    python: str | None = None  # the vLLM environment's interpreter; default $TULU_VLLM_PYTHON
    tp: int = 1  # the engine's tensor parallelism (its own GPUs)
    devices: str | None = None  # CUDA_VISIBLE_DEVICES for the engine
    env: dict = field(default_factory=dict)  # more environment for the engine process (VLLM_* settings)
    gpu_memory_utilization: float = 0.85
    enforce_eager: bool = False
    startup_timeout_s: int = 900
    timeout_s: int = 3600


@dataclass
class EngineOptions:
    kind: str = "vllm"  # vllm (out of process, HF weights) | megatron (in process; HF dir, checkpoint or run)
    device: str = "auto"  # megatron: auto | cpu | cuda
    precision: str | None = None  # default bf16 on GPUs, fp32 on CPUs
    max_model_len: int = 8192  # prompt + completion tokens; a longer prompt is skipped and counted
    vllm: VllmOptions = field(default_factory=VllmOptions)


@dataclass
class Sampling:
    temperature: float = 0.7
    max_new_tokens: int = 1024


@dataclass
class Decontam:
    enabled: bool = True  # the final files hold only rows whose prompts pass tulu-decontam
    eval: list = field(default_factory=lambda: ["preset:tulu3"])  # eval sources, as tulu-decontam --eval
    ngram: int = 8
    threshold: float = 0.5


@dataclass
class Common:
    out: str = "???"  # output directory: shards per stage, the final files, report.json / report.md
    shard_size: int = 64  # items per shard: a killed run loses at most the shards in flight
    seed: int = 1234
    # tasks that share the work (default: torchrun's RANK / WORLD_SIZE, else Slurm's SLURM_PROCID /
    # SLURM_NTASKS); every task waits for a stage's shards before the next stage, and task 0 for the last
    # stage's before it writes the final files
    task: int | None = None
    tasks: int | None = None
    wait_timeout_s: int = 86400  # how long a task waits for the other tasks' shards
    engine: EngineOptions = field(default_factory=EngineOptions)
    decontam: Decontam = field(default_factory=Decontam)
    # where it runs: local (this process; torchrun for several ranks) | slurm (OUT/synth.sbatch, submitted:
    # launcher.nodes x launcher.ranks_per_node tasks, each with engine.vllm.tp GPUs); tulu-launch's keys,
    # of which the job uses: dry_run, nodes, ranks_per_node, gpus, partition, account, time, job_name,
    # exclusive, cpus_per_task, container_*, env_profile, env, singleton, sbatch_args, python, setup
    launcher: LauncherConfig = field(default_factory=lambda: LauncherConfig(ranks_per_node=1))


@dataclass
class PersonaFilters:
    drop_truncated: bool = True  # a generation cut at max_new_tokens is dropped (the original kept it)
    leaks: bool = True  # a synthesized problem holding an answer ("Final Answer", "####", code) is dropped
    majority_k: int = 4  # math: k solutions; kept when the majority answer wins > majority_share (0: off)
    majority_share: float = 0.5
    verify_if: bool = True  # instruction following: the response passes every constraint's verifier
    dedup: bool = True  # exact duplicates of a prompt (normalised text)
    near_duplicates: float = 0.8  # word 3-gram Jaccard similarity at which a prompt is a near duplicate (1: off)
    # always on (Tülu 3's only filters): empty messages and these keywords in a response (case-insensitive)
    keywords: list = field(default_factory=lambda: ["OpenAI", "ChatGPT", "GPT-4", "Anthropic", "Claude"])


@dataclass
class PersonasConfig(Common):
    personas: str = "???"  # JSONL, PersonaHub's format: {"persona": "..."} per line
    model: str = "???"  # the generator: HF dir (vllm); or checkpoint / run dir (megatron)
    # skills, each on its own slice of the personas: instruction_following, math, grade_math, algebra, code
    skills: list = field(default_factory=lambda: ["instruction_following", "math", "grade_math", "algebra", "code"])
    start: int = 0  # first persona used
    per_skill: int | None = None  # personas per skill (default: the file split evenly)
    system_prompt: str | None = "You are a helpful mathematician assistant."  # what the original sent, always
    problem: Sampling = field(default_factory=Sampling)
    solution: Sampling = field(default_factory=Sampling)
    filters: PersonaFilters = field(default_factory=PersonaFilters)


@dataclass
class Judge:
    model: str = "???"  # HF dir (vllm); or checkpoint / run dir (megatron)
    # ultrafeedback: Tülu 3's four aspect prompts, every completion in one call per aspect | single: one
    # short call per completion and aspect, answered "Rating: N" (for small judges)
    template: str = "ultrafeedback"
    aspects: list = field(default_factory=lambda: ["helpfulness", "instruction_following", "honesty", "truthfulness"])
    temperature: float = 0.1  # Tülu 3's (GPT-4o through the Batch API)
    max_new_tokens: int = 1024
    retries: int = 3  # a malformed judgement is asked again up to this many times, then dropped


@dataclass
class PreferencesConfig(Common):
    prompts: list = field(default_factory=list)  # sources: rows with messages, or prompt, or chosen
    limit: int | None = None  # prompts used (in order)
    policy: str | None = None  # the on-policy SFT model
    pool: list = field(default_factory=list)  # other models: paths, each served in turn
    completions_per_model: int = 1
    sampling: Sampling = field(default_factory=lambda: Sampling(temperature=1.0, max_new_tokens=2048))
    drop_truncated: bool = True  # a completion cut at the length limit is not judged (original: judged)
    judge: Judge = field(default_factory=Judge)
    # judge: chosen = highest mean rating | if_verified: chosen passes the prompt's IFEval ground truth,
    # rejected fails it (the IF-augmented variant; needs dataset=ifeval rows)
    pairs: str = "judge"
    # the released pipeline's quirks: a malformed judgement chunk rated 1 and N/A as -1, no retries;
    # rejected drawn from all other completions (ties included), one rating => rejected = chosen
    tulu3_compat: bool = False


@dataclass
class RlvrConfig(Common):
    source: list = field(default_factory=list)  # rows: GSM8K (question/answer), MATH (problem/solution), prompts
    kind: str = "gsm8k"  # gsm8k | math | ifeval (prompts + one drawn constraint each)
    limit: int | None = None
    fewshot: str | None = None  # JSONL of {question, answer} exemplars put before each question (Tülu: 8-shot)


SCHEMAS = {"personas": PersonasConfig, "preferences": PreferencesConfig, "rlvr": RlvrConfig}


def compose(verb: str, overrides: list[str], config_dir: str | None = None):
    """The verb's config: conf/<verb>.yaml (or the user's in `config_dir`) + overrides, typed."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    from tulu_mcore.errors import UserError

    if verb not in SCHEMAS:
        raise ConfigError(f"unknown verb {verb!r}: one of {', '.join(VERBS)}")
    root = Path(config_dir).resolve() if config_dir else CONF_DIR
    if not (root / f"{verb}.yaml").is_file():
        raise ConfigError(f"{root / (verb + '.yaml')}: no such config")
    try:
        with initialize_config_dir(str(root), version_base=None):
            raw = hydra_compose(config_name=verb, overrides=list(overrides))
    except HydraException as e:
        raise UserError(f"config: {str(e).splitlines()[0]}") from None
    try:
        merged = OmegaConf.merge(OmegaConf.structured(SCHEMAS[verb]), raw)
    except OmegaConfBaseException as e:
        raise ConfigError(f"tulu-synth {verb}: {str(e).splitlines()[0]}") from None
    unset = OmegaConf.missing_keys(merged)
    if "judge.model" in unset and merged.pairs == "if_verified":  # no judge: pairs come from the verifier
        merged.judge.model = ""
        unset.discard("judge.model")
    if unset:
        raise ConfigError(f"tulu-synth {verb}: set {', '.join(k + '=...' for k in sorted(unset))}")
    cfg = OmegaConf.to_object(merged)
    _check(verb, cfg)
    return cfg


def _check(verb: str, cfg) -> None:
    if cfg.launcher.name not in ("local", "slurm"):
        raise ConfigError(f"launcher.name={cfg.launcher.name!r}: local or slurm")
    if cfg.engine.kind not in ("vllm", "megatron"):
        raise ConfigError(f"engine.kind={cfg.engine.kind!r}: vllm or megatron")
    if cfg.shard_size < 1:
        raise ConfigError("shard_size must be >= 1")
    if verb == "personas":
        from tulu_mcore.synth.templates import SKILLS

        bad = [s for s in cfg.skills if s not in SKILLS]
        if bad or not cfg.skills:
            raise ConfigError(f"skills={cfg.skills}: choose from {', '.join(SKILLS)}")
    if verb == "preferences":
        from tulu_mcore.synth.judge import ASPECTS, TEMPLATES

        if cfg.judge.template not in TEMPLATES:
            raise ConfigError(f"judge.template={cfg.judge.template!r}: one of {', '.join(TEMPLATES)}")
        if cfg.tulu3_compat and cfg.judge.template != "ultrafeedback" and cfg.pairs == "judge":
            raise ConfigError("tulu3_compat=true parses judgements as the released pipeline did, which sent only "
                              "judge.template=ultrafeedback (its parser rates a bare 'Rating: N' reply 1)")
        bad = [a for a in cfg.judge.aspects if a not in ASPECTS]
        if bad or not cfg.judge.aspects:
            raise ConfigError(f"judge.aspects={cfg.judge.aspects}: choose from {', '.join(ASPECTS)}")
        if cfg.pairs not in ("judge", "if_verified"):
            raise ConfigError(f"pairs={cfg.pairs!r}: judge or if_verified")
        if not cfg.prompts:
            raise ConfigError("prompts=[...]: the prompt sources")
        models = ([cfg.policy] if cfg.policy else []) + list(cfg.pool)
        if not models:
            raise ConfigError("set policy=... (the on-policy SFT model) and/or pool=[...] (other models)")
        if len(models) * cfg.completions_per_model < 2:
            raise ConfigError("a pair needs two completions per prompt: add a pool model or set "
                              "completions_per_model=2")
    if verb == "rlvr":
        if cfg.kind not in ("gsm8k", "math", "ifeval"):
            raise ConfigError(f"kind={cfg.kind!r}: gsm8k, math or ifeval")
        if not cfg.source:
            raise ConfigError("source=[...]: the rows to turn into RLVR prompts")
