"""Preference pairs: the Tülu preference-mixture format and the prompt/chosen/rejected format.

* ``{"chosen": [messages], "rejected": [messages]}``: two whole conversations that share every message
  but the final assistant turn (allenai/llama-3.1-tulu-3-*-preference-mixture);
* ``{"prompt": str | [messages], "chosen": str | [messages], "rejected": str | [messages]}``: a string
  prompt is one user turn; a string response is one assistant turn appended to the prompt; responses
  that already begin with the prompt (the released mixtures carry ``prompt`` beside whole
  conversations) are taken as they are.

Both sides are rendered and labelled like SFT (every assistant turn trained). Problems, each with the
example's origin: a missing field, sides that are not conversations, sides that do not share a prompt,
identical chosen and rejected responses.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from tulu_mcore.data.sources import SourceSpec, load_items
from tulu_mcore.data.template import ConversationError, check_messages


def _as_messages(value, role: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, dict) and "role" in value:
        return [value]
    if isinstance(value, list):
        return value
    raise ConversationError("malformed pair", f"expected a string or a list of messages, got {type(value).__name__}")


def pair_from_row(row) -> tuple[list[dict], list[dict]]:
    """(chosen conversation, rejected conversation) of one row, validated."""
    if not isinstance(row, dict):
        raise ConversationError("malformed pair", "not an object")
    missing = [k for k in ("chosen", "rejected") if k not in row]
    if missing:
        raise ConversationError("missing field", f"missing field(s) {', '.join(missing)}")
    if "prompt" in row:
        prompt = _as_messages(row["prompt"], "user")
        chosen, rejected = _as_messages(row["chosen"], "assistant"), _as_messages(row["rejected"], "assistant")
        # the released Tülu mixtures carry the prompt string beside whole conversations that begin with it
        if not (chosen[:len(prompt)] == prompt and rejected[:len(prompt)] == prompt and len(chosen) > len(prompt)):
            chosen, rejected = prompt + chosen, prompt + rejected
    else:
        chosen, rejected = _as_messages(row["chosen"], "assistant"), _as_messages(row["rejected"], "assistant")
    for side, msgs in (("chosen", chosen), ("rejected", rejected)):
        try:
            check_messages(msgs)
        except ConversationError as e:
            raise ConversationError(e.reason, f"{side}: {e}") from None
        if msgs[-1]["role"] != "assistant":
            raise ConversationError("malformed pair", f"{side} does not end with an assistant turn")
    if chosen[:-1] != rejected[:-1]:
        raise ConversationError("different prompts", "chosen and rejected do not share their prompt "
                                "(every message but the last must be equal)")
    if chosen[-1]["content"] == rejected[-1]["content"]:
        raise ConversationError("identical chosen and rejected", "chosen and rejected responses are identical")
    return chosen, rejected


@dataclass
class LoadedPairs:
    pairs: list[tuple[list[dict], list[dict]]] = field(default_factory=list)
    origins: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    examples_seen: int = 0


def load_pairs(specs: list[SourceSpec], *, on_error: str, seed: int) -> LoadedPairs:
    pairs, origins, skipped, seen = load_items(specs, on_error=on_error, seed=seed, parse=pair_from_row, what="pairs")
    return LoadedPairs(pairs, origins, skipped, seen)
