"""Tokenizers for training: which one a run uses, and what identifies it for the data cache."""

from __future__ import annotations

import hashlib
from pathlib import Path

from tulu_mcore.errors import UserError
from tulu_mcore.hub import resolve_pretrained

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model")


def load_tokenizer(path: str | Path):
    """A fast tokenizer with an EOS token (the template ends every assistant turn with it)."""
    from transformers import AutoTokenizer

    d = resolve_pretrained(str(path), "tokenizer")
    try:
        tok = AutoTokenizer.from_pretrained(str(d))
    except Exception as e:  # missing or unreadable tokenizer files
        raise UserError(f"{d}: cannot load a tokenizer ({type(e).__name__}: {str(e).splitlines()[0]})") from None
    if not tok.is_fast:
        raise UserError(f"{d}: a fast tokenizer (tokenizer.json) is needed for character offsets")
    if tok.eos_token is None:
        raise UserError(f"{d}: the tokenizer has no eos_token; the Tülu template ends assistant turns with it")
    tok.tulu_source = d  # where it came from, for the cache key and for copying next to checkpoints
    return tok


def tokenizer_files(tok) -> list[Path]:
    d = Path(tok.tulu_source)
    return [d / n for n in TOKENIZER_FILES if (d / n).is_file()]


def tokenizer_fingerprint(tok) -> str:
    h = hashlib.sha256()
    for f in tokenizer_files(tok):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]
