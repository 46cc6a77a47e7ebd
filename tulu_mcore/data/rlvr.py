"""Prompts with verifiable answers for RLVR (the format of allenai/RLVR-GSM-MATH-IF-Mixed-Constraints):
``{"messages": [...], "ground_truth": ..., "dataset": "gsm8k" | "MATH" | "ifeval"}``.

The messages are the prompt (system and user turns; a trailing assistant turn, as some rows carry the
reference answer, is dropped). The prompt is rendered with the Tülu template followed by the generation
prompt ``<|assistant|>\\n``; the policy's response is scored by :mod:`tulu_mcore.rewards` against the
row's ground truth, the ``dataset`` field choosing the verifier.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from tulu_mcore.data.sources import SourceSpec, load_items
from tulu_mcore.data.template import ConversationError, check_messages, render
from tulu_mcore.rewards import DATASETS

GENERATION_PROMPT = "<|assistant|>\n"


@dataclass(frozen=True)
class Prompt:
    messages: list[dict]
    ground_truth: str
    dataset: str  # lower-case: gsm8k | math | ifeval


def prompt_from_row(row) -> Prompt:
    if not isinstance(row, dict):
        raise ConversationError("malformed row", "not an object")
    missing = [k for k in ("messages", "ground_truth", "dataset") if k not in row]
    if missing:
        raise ConversationError("missing field", f"missing field(s) {', '.join(missing)}")
    messages = row["messages"]
    if not isinstance(messages, list) or not messages:
        raise ConversationError("empty messages", "'messages' must be a non-empty list of {role, content} objects")
    if isinstance(messages[-1], dict) and messages[-1].get("role") == "assistant":
        messages = messages[:-1]  # a reference answer: the policy writes its own
    if not messages:
        raise ConversationError("empty messages", "no prompt: the messages hold only an assistant turn")
    # the prompt must be a valid conversation once a response is appended
    check_messages(messages + [{"role": "assistant", "content": ""}])
    dataset = str(row["dataset"]).lower()
    if dataset not in DATASETS:
        raise ConversationError("unknown dataset", f"dataset {row['dataset']!r} has no verifier (one of "
                                f"{list(DATASETS)})")
    truth = row["ground_truth"]
    if isinstance(truth, list) and len(truth) == 1:  # some releases wrap it in a list
        truth = truth[0]
    if not isinstance(truth, str) or not truth.strip():
        raise ConversationError("missing field", "ground_truth must be a non-empty string")
    return Prompt(messages, truth, dataset)


@dataclass
class LoadedPrompts:
    prompts: list[Prompt] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    examples_seen: int = 0


def load_prompts(specs: list[SourceSpec], *, on_error: str, seed: int) -> LoadedPrompts:
    items, origins, skipped, seen = load_items(specs, on_error=on_error, seed=seed, parse=prompt_from_row,
                                               what="prompts")
    return LoadedPrompts(items, origins, skipped, seen)


def prompt_text(messages: list[dict]) -> str:
    text, _ = render(messages, eos="")
    return text + GENERATION_PROMPT


def encode_prompts(prompts: list[Prompt], tokenizer) -> list[np.ndarray]:
    """Token ids of each prompt, generation prompt included (no BOS, like the training sequences)."""
    enc = tokenizer([prompt_text(p.messages) for p in prompts], add_special_tokens=False)
    return [np.asarray(ids, dtype=np.int64) for ids in enc["input_ids"]]
