"""One evaluation: the model resolved to an HF directory, lm-eval run on the tasks with one backend, the
results written by :mod:`.report`.

Backends: ``hf`` (transformers in this process, CPU or GPU), ``vllm`` (vLLM's OpenAI server started on
the export from vLLM's own environment, then as ``server``), ``server`` (any OpenAI-compatible
``/v1/completions`` endpoint: prompts are rendered here with the export's tokenizer and chat template
and sent as token ids, so the server's own template plays no part). Always: no BOS added (Tülu's
sequences have none), the chat template applied with few-shot examples as turns, except for tasks whose
OLMES setting is not chat (DROP), which run in a second pass without it.
"""

from __future__ import annotations

import json
import logging
import shlex
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from tulu_mcore.errors import UserError
from tulu_mcore.evaluation import presets

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
BACKENDS = ("hf", "vllm", "server")


@dataclass
class Settings:
    tasks: list[str]
    backend: str = "hf"
    limit: int | None = None  # rows per task (the first N)
    data: str | None = None  # local benchmark folder; default the local HF cache
    include: list[str] = field(default_factory=list)  # more lm-eval task folders
    url: str | None = None  # backend=server: the endpoint's base URL (…/v1)
    device: str | None = None  # backend=hf: default cuda when available
    dtype: str = "auto"
    batch_size: int = 8
    max_length: int = 4096  # context window (OLMES: 4096)
    max_gen_toks: int | None = None  # caps every task's new tokens (quick runs); None: the task's own
    repeats: int | None = None  # caps pass@k tasks' samples (quick runs); None: the task's own (20)
    seed: int = 1234
    num_concurrent: int = 4  # backend=server: requests in flight
    vllm_args: str = ""  # backend=vllm: more `vllm serve` options, e.g. "--tensor-parallel-size 8"
    not_run: dict[str, str] = field(default_factory=dict)


def resolve_model(model: str, work: Path) -> Path:
    """An HF directory from MODEL: an HF directory itself, a run directory (its hf/ export, else its
    latest checkpoint exported) or a checkpoint (exported into `work`/hf)."""
    p = Path(model)
    if (p / "config.json").is_file():
        return p
    if (p / "hf" / "config.json").is_file():
        return p / "hf"
    from tulu_mcore.checkpoint.run import resolve_checkpoint

    ckpt = resolve_checkpoint(p)
    if not (ckpt / "metadata.json").is_file() and not (ckpt / ".metadata").exists():
        if not p.exists():
            raise UserError(f"{model}: no such file or directory")
        raise UserError(f"{model}: neither a Hugging Face directory (config.json), a run directory nor a checkpoint")
    from tulu_mcore.convert.mcore_to_hf import convert_mcore_to_hf

    out = work / "hf"
    logging.getLogger("tulu_mcore").info("exporting %s to %s", ckpt, out)
    return convert_mcore_to_hf(str(ckpt), str(out), overwrite=True, progress=False)


def task_configs(tasks: list[str], include: list[str]) -> dict[str, dict]:
    """Each task's file (ours, then the include folders') read without importing anything."""
    from tulu_mcore.evaluation.benchmarks import task_yaml

    found = {}
    for folder in [TASKS_DIR, *map(Path, include)]:
        for f in sorted(folder.rglob("*.yaml")):
            try:
                cfg = task_yaml(f.read_text()) or {}
            except yaml.YAMLError as e:
                raise UserError(f"{f}: not valid YAML: {e}") from None
            if isinstance(cfg, dict) and isinstance(cfg.get("task"), str):
                found.setdefault(cfg["task"], cfg)
    unknown = [t for t in tasks if t not in found]
    if unknown:
        ours = sorted(t for t in found if t.endswith("_tulu"))
        raise UserError(f"unknown task(s): {', '.join(unknown)}; presets: {', '.join(presets.PRESETS)}; "
                        f"tasks: {', '.join(ours)} (more with include=DIR of lm-eval task files)")
    return {t: found[t] for t in tasks}


def _lm(hf_dir: Path, s: Settings, url: str | None):
    if s.backend == "hf":
        import torch
        from lm_eval.models.huggingface import HFLM

        device = s.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = s.dtype if s.dtype != "auto" else ("bfloat16" if device.startswith("cuda") else "float32")
        return HFLM(pretrained=str(hf_dir), device=device, dtype=dtype, batch_size=s.batch_size,
                    max_length=s.max_length, add_bos_token=False)
    from lm_eval.models.openai_completions import LocalCompletionsAPI

    from tulu_mcore.evaluation.serve import models

    try:
        name = models(url)[0]
    except Exception as e:
        raise UserError(f"backend=server: {url}/models did not answer ({type(e).__name__}: {e}); "
                        f"give the endpoint's base URL, e.g. url=http://HOST:8000/v1") from None
    return LocalCompletionsAPI(model=name, base_url=f"{url}/completions", tokenizer=str(hf_dir),
                               tokenizer_backend="huggingface", tokenized_requests=True,
                               num_concurrent=s.num_concurrent, max_length=s.max_length, seed=s.seed,
                               add_bos_token=False, max_retries=3, timeout=600)


def _apply_caps(task, cfg: dict, s: Settings) -> None:
    """Quick-run caps on a task's new tokens and samples (recorded in the results' settings)."""
    gen = task.get_config("generation_kwargs") or {}
    if s.max_gen_toks and gen and gen.get("max_gen_toks", 1 << 30) > s.max_gen_toks:
        task.set_config(key="generation_kwargs", value={"max_gen_toks": s.max_gen_toks}, update=True)
    if s.repeats and (cfg.get("repeats") or 1) > s.repeats:
        task.set_config(key="repeats", value=s.repeats)


def run_tasks(lm, s: Settings, cfgs: dict[str, dict]) -> list[dict]:
    """lm-eval on `lm` (any lm_eval LM): the chat tasks with the chat template, then the others; one
    lm-eval result per pass."""
    import datasets
    import lm_eval
    from lm_eval.tasks import TaskManager

    datasets.disable_progress_bars()
    logging.getLogger("lm_eval.api.task").setLevel(logging.ERROR)  # "custom kwargs" notes for every task
    tm = TaskManager(include_path=[str(TASKS_DIR), *s.include],
                     metadata={"data_dir": str(Path(s.data).resolve())} if s.data else {})
    chat = [t for t in s.tasks if (cfgs[t].get("metadata") or {}).get("chat", True)]
    plain = [t for t in s.tasks if t not in chat]
    runs = []
    for names, as_chat in ((chat, True), (plain, False)):
        if not names:
            continue
        tasks = tm.load(names)["tasks"]
        for name, task in tasks.items():
            _apply_caps(task, cfgs[name], s)
        runs.append(lm_eval.simple_evaluate(
            model=lm, tasks=[tasks[t] for t in names], task_manager=tm, limit=s.limit,
            apply_chat_template=as_chat, fewshot_as_multiturn=as_chat, log_samples=True, bootstrap_iters=0,
            random_seed=s.seed, numpy_random_seed=s.seed, torch_random_seed=s.seed, fewshot_random_seed=s.seed,
            confirm_run_unsafe_code=True))
    return runs


def evaluate(model: str, s: Settings, out: Path) -> dict:
    """Runs the tasks on MODEL and writes `out`/results.json, results.md, results.png; returns the record."""
    from tulu_mcore.evaluation import report

    if s.backend not in BACKENDS:
        raise UserError(f"backend={s.backend}: one of {', '.join(BACKENDS)}")
    if s.backend == "server" and not s.url:
        raise UserError("backend=server needs url=http://HOST:PORT/v1 (an OpenAI-compatible endpoint)")
    cfgs = task_configs(s.tasks, s.include)
    out.mkdir(parents=True, exist_ok=True)
    hf_dir = resolve_model(model, out)
    t0 = time.time()
    with _backend(hf_dir, s, out) as url:
        runs = run_tasks(_lm(hf_dir, s, url), s, cfgs)
    record = report.record(model=model, hf_dir=hf_dir, settings={**asdict(s), "seconds": time.time() - t0},
                           runs=runs, configs=cfgs)
    report.write(record, runs, out)
    return record


class _backend:
    """The endpoint for the run: none (hf), a vLLM server started here (vllm), or the given URL."""

    def __init__(self, hf_dir: Path, s: Settings, out: Path):
        self.hf_dir, self.s, self.out, self.cm = hf_dir, s, out, None

    def __enter__(self):
        if self.s.backend == "hf":
            return None
        if self.s.backend == "server":
            return self.s.url.rstrip("/")
        from tulu_mcore.evaluation.serve import vllm_server

        extra = shlex.split(self.s.vllm_args)
        self.cm = vllm_server(self.hf_dir, self.out / "vllm.log", max_model_len=self.s.max_length,
                              dtype=self.s.dtype, seed=self.s.seed, extra=extra)
        self.s.url = self.cm.__enter__()  # recorded with the settings
        return self.s.url

    def __exit__(self, *exc):
        if self.cm is not None:
            return self.cm.__exit__(*exc)
        return False


def read_results(path: Path) -> dict:
    f = path / "results.json" if path.is_dir() else path
    if not f.is_file():
        raise UserError(f"{path}: no results.json (a tulu-eval output directory holds one)")
    return json.loads(f.read_text())
