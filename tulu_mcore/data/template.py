"""The Tülu chat template and the SFT labels, exactly as the Tülu 3 recipe trains (open-instruct's
"tulu" template and ``encode_sft_example``):

* system:    ``<|system|>\\n{content}\\n``
* user:      ``<|user|>\\n{content}\\n``
* assistant: ``<|assistant|>\\n{content}{eos}\\n``, without the final ``\\n`` when it is the last message
* no BOS; the role markers are plain text; ``{eos}`` is the tokenizer's EOS token.

Labels: every assistant turn's content and its EOS are trained; everything else (system and user
turns, the ``<|assistant|>\\n`` prefix, the newline after a non-final EOS) is -100.

The rendered text is tokenized once (``add_special_tokens=False``) and a token is trained when it
starts inside an assistant span (character offsets from the fast tokenizer). open-instruct derives
the same spans by re-tokenizing every conversation prefix; with tokenizers whose pre-tokenizer splits at
newlines (Llama 3, the built-in tiny one) the two agree, and tokenizing once keeps the cost linear.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TEMPLATE_NAME = "tulu"
TEMPLATE_VERSION = 1  # part of the tokenized-data cache key: bump when rendering or labels change
IGNORE_INDEX = -100
ROLES = ("system", "user", "assistant")


# The same template in Jinja, as Hugging Face tokenizers and servers apply it (open-instruct's "tulu"
# chat template): exports carry it so that `apply_chat_template` renders exactly what was trained on
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ '<|system|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'user' %}{{ '<|user|>\n' + message['content'] + '\n' }}"
    "{% elif message['role'] == 'assistant' %}"
    "{% if not loop.last %}{{ '<|assistant|>\n' + message['content'] + eos_token + '\n' }}"
    "{% else %}{{ '<|assistant|>\n' + message['content'] + eos_token }}{% endif %}"
    "{% endif %}"
    "{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    "{% endfor %}"
)


class ConversationError(ValueError):
    """A conversation the template cannot render: `reason` names the kind (for skip counts), the
    message says what exactly."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def check_messages(messages) -> None:
    """Roles known, contents strings, optional leading system messages, then user and assistant
    alternating (starting with user), at least one assistant turn. An empty assistant turn is kept, as
    Tülu's released code keeps it: only its EOS is trained."""
    if not isinstance(messages, list) or not messages:
        raise ConversationError("empty messages", "'messages' must be a non-empty list of {role, content} objects")
    expected = "user"
    seen_assistant = False
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ConversationError("malformed message", f"message {i} is not an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            raise ConversationError("unknown role", f"message {i} has unknown role {role!r} (expected one of {list(ROLES)})")
        if not isinstance(content, str):
            raise ConversationError("malformed message", f"message {i} ({role}) has non-string content")
        if role == "system":
            if any(x["role"] != "system" for x in messages[:i]):
                raise ConversationError("turns out of order", f"message {i}: a system message may only come first")
            continue
        if role != expected:
            raise ConversationError(
                "turns out of order",
                f"message {i} is '{role}' but '{expected}' was expected: turns must alternate user, "
                "assistant, user, ... after any system messages"
            )
        seen_assistant |= role == "assistant"
        expected = "assistant" if role == "user" else "user"
    if not seen_assistant:
        raise ConversationError("no assistant turn", "no assistant message: nothing to train on")


def render(messages: list[dict], eos: str) -> tuple[str, list[tuple[int, int]]]:
    """The template's text and the character spans [start, end) that are trained."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    last = len(messages) - 1
    for i, m in enumerate(messages):
        role, content = m["role"], m["content"]
        if role == "assistant":
            head = "<|assistant|>\n"
            body = content + eos
            tail = "" if i == last else "\n"
            spans.append((pos + len(head), pos + len(head) + len(body)))
            piece = head + body + tail
        else:
            piece = f"<|{role}|>\n{content}\n"
        parts.append(piece)
        pos += len(piece)
    return "".join(parts), spans


@dataclass
class Encoded:
    input_ids: np.ndarray  # int32 [n]
    trained: np.ndarray  # bool [n]: the token is a training target
    text: str
    truncated: bool


def token_mask(offsets: np.ndarray, spans: list[tuple[int, int]]) -> np.ndarray:
    """Tokens whose first character lies in one of `spans` (offsets: [n, 2] character ranges)."""
    starts = offsets[:, 0]
    mask = np.zeros(len(starts), dtype=bool)
    for a, b in spans:
        mask |= (starts >= a) & (starts < b)
    return mask


def encode_batch(conversations: list[list[dict]], tokenizer, max_seq_len: int) -> list[Encoded]:
    """Render and tokenize many conversations at once (the fast tokenizer spreads the batch over its
    threads). Conversations must have passed :func:`check_messages`."""
    if not conversations:
        return []
    eos = tokenizer.eos_token
    rendered = [render(msgs, eos) for msgs in conversations]
    enc = tokenizer([t for t, _ in rendered], add_special_tokens=False, return_offsets_mapping=True)
    out = []
    for (text, spans), ids, offsets in zip(rendered, enc["input_ids"], enc["offset_mapping"]):
        ids = np.asarray(ids, dtype=np.int32)
        mask = token_mask(np.asarray(offsets, dtype=np.int64).reshape(-1, 2), spans)
        truncated = len(ids) > max_seq_len
        out.append(Encoded(ids[:max_seq_len], mask[:max_seq_len], text, truncated))
    return out


def labels_of(e: Encoded) -> list[int]:
    """HF-style labels: the token id where trained, -100 elsewhere (aligned with input_ids)."""
    return np.where(e.trained, e.input_ids, IGNORE_INDEX).tolist()
