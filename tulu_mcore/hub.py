"""Pretrained names -> local directories: a path, or a hub name already in the local Hugging Face
cache. Nothing is ever downloaded here (clusters and CI have no internet, and a silent multi-GB
download is not what a user expects from a training command)."""

from __future__ import annotations

import os
from pathlib import Path

from tulu_mcore.errors import UserError


def resolve_pretrained(name: str, what: str = "model") -> Path:
    p = Path(name).expanduser()
    if p.exists():
        return p
    if name.count("/") == 1 and not name.startswith((".", "/", "~")):
        try:
            from huggingface_hub import snapshot_download

            return Path(snapshot_download(repo_id=name, local_files_only=True))
        except Exception:  # not cached (LocalEntryNotFoundError) or an unusable cache: same advice
            pass
        cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HF_HOME") or "~/.cache/huggingface"
        raise UserError(
            f"{what} {name!r} is not a local path and is not in the Hugging Face cache ({cache}); "
            f"download it first (huggingface-cli download {name}) or give a local directory"
        )
    raise UserError(f"{what} {name!r}: no such file or directory")
