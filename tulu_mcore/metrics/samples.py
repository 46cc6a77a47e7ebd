"""A few rollouts of an RL step, as text, into ``run.dir/samples.jsonl`` (rank 0's rollouts, every
``metrics.samples_every`` steps from the first, ``metrics.samples_per_step`` of them spread over the
step's prompts): step, prompt (as the model saw it, chat template included), response (as the
verifier read it), dataset, ground_truth, verified, score, finished, response_tokens."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLES_FILE = "samples.jsonl"


def due(step: int, every: int) -> bool:
    """Steps 1, 1 + every, 1 + 2*every, ... (`every` 0: never)."""
    return every > 0 and (step - 1) % every == 0


def rollout_samples(step: int, batch, rollouts, k: int) -> list[dict]:
    """`k` of the step's rollouts on this rank, spread over its prompts. Read by duck typing (metrics
    knows no recipe): `batch` a RolloutBatch (``trajectories`` with ids, prompt_len, dataset, verified,
    score, finished; ``samples_per_prompt``), `rollouts` the RolloutDriver that drew it (``data`` with
    ``step_prompts(step - 1)`` and ``prompts``, ``tokenizer``, ``dp_rank``, ``dp_size``), `step` 1-based
    as the records'."""
    trajectories = batch.trajectories
    if not trajectories or k <= 0:
        return []
    indices = rollouts.data.step_prompts(step - 1)[1][rollouts.dp_rank::rollouts.dp_size]
    prompts = [rollouts.data.prompts[i] for i in indices]
    tok, n = rollouts.tokenizer, batch.samples_per_prompt
    picked = sorted({round(i * len(trajectories) / k) for i in range(k)} - {len(trajectories)})
    out = []
    for i in picked:
        t = trajectories[i]
        prompt = prompts[i // n] if i // n < len(prompts) else None
        out.append({
            "step": step,
            "prompt": tok.decode(t.ids[:t.prompt_len].tolist(), skip_special_tokens=False),
            "response": tok.decode(t.ids[t.prompt_len:].tolist(), skip_special_tokens=True),
            "dataset": t.dataset,
            "ground_truth": prompt.ground_truth if prompt is not None else None,
            "verified": bool(t.verified),
            "score": float(t.score),
            "finished": bool(t.finished),
            "response_tokens": int(len(t.ids) - t.prompt_len),
        })
    return out


def keep_until(run_dir: Path, step: int) -> None:
    """A resumed run repeats the steps after its checkpoint: drop their old samples."""
    path = run_dir / SAMPLES_FILE
    if path.is_file():
        kept = [line for line in path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        path.write_text("".join(line + "\n" for line in kept))


def append(run_dir: Path, samples: list[dict]) -> None:
    with open(run_dir / SAMPLES_FILE, "a") as f:
        for s in samples:
            f.write(json.dumps(s, ensure_ascii=False) + "\n")
