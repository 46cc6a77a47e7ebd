"""Prompts with verifiable answers for RLVR (the format of allenai/RLVR-GSM-MATH-IF-Mixed-Constraints):
``{"messages": [...], "ground_truth": ..., "dataset": "gsm8k" | "MATH" | "ifeval"}``.

The messages are the prompt (system and user turns; a trailing assistant turn, as some rows carry the
reference answer, is dropped). The prompt is rendered with the Tülu template followed by the generation
prompt ``<|assistant|>\\n``; the policy's response is scored by :mod:`tulu_mcore.rewards` against the
row's ground truth, the ``dataset`` field choosing the verifier.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tulu_mcore.data.sources import SourceSpec, load_items
from tulu_mcore.data.template import ConversationError, check_messages, render
from tulu_mcore.rewards import DATASETS, ifeval, math_answer

GENERATION_PROMPT = "<|assistant|>\n"


UNVERIFIABLE = ("keep", "bad")  # data.unverifiable


@dataclass(frozen=True)
class Prompt:
    messages: list[dict]
    ground_truth: str
    dataset: str  # lower-case: gsm8k | math | ifeval
    problem: str | None = None  # why no response can verify against the ground truth (data.unverifiable=keep)


def prompt_messages(messages) -> list[dict]:
    """A row's messages as a prompt: a trailing assistant turn (a reference answer: the policy writes its
    own) dropped; what is left must be a valid conversation once a response is appended."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("empty messages", "'messages' must be a non-empty list of {role, content} objects")
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        messages = messages[:-1]
    if not messages:
        raise ConversationError("empty messages", "no prompt: the messages hold only an assistant turn")
    check_messages(messages + [{"role": "assistant", "content": "(the response)"}])
    return messages


def prompt_from_row(row, unverifiable: str = "keep") -> Prompt:
    """A row's prompt. A ground truth no verifier can use (IFEval's not a known check, MATH's with
    unbalanced braces or an empty box) is kept with its `problem` (`unverifiable="keep"`: the release
    kept such rows, which score 0) or makes the row bad (`"bad"`)."""
    if not isinstance(row, dict):
        raise ConversationError("malformed row", "not an object")
    missing = [k for k in ("messages", "ground_truth", "dataset") if k not in row]
    if missing:
        raise ConversationError("missing field", f"missing field(s) {', '.join(missing)}")
    messages = prompt_messages(row["messages"])
    dataset = str(row["dataset"]).lower()
    if dataset not in DATASETS:
        raise ConversationError("unknown dataset", f"dataset {row['dataset']!r} has no verifier (one of "
                                f"{list(DATASETS)})")
    truth = row["ground_truth"]
    if isinstance(truth, list) and len(truth) == 1:  # some releases wrap it in a list
        truth = truth[0]
    if not isinstance(truth, str) or not truth.strip():
        raise ConversationError("missing field", "ground_truth must be a non-empty string")
    problem = {"ifeval": _ifeval_problem, "math": _math_problem}.get(dataset, lambda _: None)(truth)
    if problem:
        problem = f"{row['dataset']} ground_truth {_clip(truth)}: {problem}; no response could be verified against it"
        if unverifiable == "bad":
            raise ConversationError("bad ground truth", problem)
        return Prompt(messages, truth, dataset, problem)
    return Prompt(messages, truth, dataset)


def _clip(text: str, n: int = 80) -> str:
    return repr(text if len(text) <= n else text[:n] + "...")


def _ifeval_problem(truth: str) -> str | None:
    """An IFEval ground truth is a JSON object whose func_name is one of the verifier's checks."""
    try:
        spec = json.loads(truth)
    except (ValueError, RecursionError):
        return "not valid JSON (expected {\"func_name\": ..., its arguments})"
    if not isinstance(spec, dict):
        return "not a JSON object (expected {\"func_name\": ..., its arguments})"
    name = spec.get("func_name")
    if not isinstance(name, str) or name not in ifeval.FUNCTIONS:
        return f"unknown func_name {name!r} (one of {', '.join(sorted(ifeval.FUNCTIONS))})"
    return None


def _math_problem(truth: str) -> str | None:
    """A MATH ground truth: LaTeX with balanced braces; a \\boxed{} one must hold a non-empty answer."""
    depth = 0
    for m in re.finditer(r"\\.|[{}]", truth, flags=re.S):
        tok = m.group()
        depth += tok == "{"
        depth -= tok == "}"
        if depth < 0:
            break
    if depth != 0:
        return "unbalanced braces"
    if "\\boxed" in truth or "\\fbox" in truth:
        inner = math_answer.last_boxed(truth)
        if inner is None or not inner.strip():
            return "an empty or unreadable \\boxed{} answer"
    return None


@dataclass
class LoadedPrompts:
    prompts: list[Prompt] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    examples_seen: int = 0

    @property
    def unverifiable(self) -> list[str]:
        """'file:line: why' of each kept prompt whose ground truth no response can match."""
        return [f"{o}: {p.problem}" for p, o in zip(self.prompts, self.origins) if p.problem]

    def warning(self) -> str | None:
        bad = self.unverifiable
        if not bad:
            return None
        return (f"warning: {len(bad):,} prompt(s) have a ground truth no verifier can use; kept, as the release "
                "did (they practically always score 0; data.unverifiable=bad makes them bad rows): "
                + "; ".join(bad[:3]) + (f"; and {len(bad) - 3:,} more" if len(bad) > 3 else ""))


def load_prompts(specs: list[SourceSpec], *, on_error: str, seed: int, unverifiable: str = "keep") -> LoadedPrompts:
    items, origins, skipped, seen = load_items(specs, on_error=on_error, seed=seed,
                                               parse=lambda row: prompt_from_row(row, unverifiable), what="prompts")
    return LoadedPrompts(items, origins, skipped, seen)


def prompt_text(messages: list[dict], eos: str = "") -> str:
    """The rendered prompt and the generation prompt, as ``apply_chat_template(add_generation_prompt=True)``
    renders it with the Tülu template (open-instruct's RL prompts): an earlier assistant turn ends with
    `eos`, the tokenizer's EOS."""
    text, _ = render(messages, eos=eos)
    return text + GENERATION_PROMPT


def encode_prompts(prompts: list[Prompt], tokenizer) -> list[np.ndarray]:
    """Token ids of each prompt, generation prompt included (no BOS, like the training sequences)."""
    if not prompts:
        return []
    enc = tokenizer([prompt_text(p.messages, tokenizer.eos_token) for p in prompts], add_special_tokens=False)
    return [np.asarray(ids, dtype=np.int64) for ids in enc["input_ids"]]
