"""tulu-synth on real engines: a personas run killed mid-way and rerun (and one shared by two tasks)
writes exactly the rows of an uninterrupted run; on-policy preference pairs through real vLLM, judged
by the demo's SFT model, train with recipe=dpo (the megatron engine's path runs in the main job)."""

import json
import signal
import subprocess
import sys
import time

from tests import rank_pool
from tests.conftest import ROOT, metrics, train

PERSONAS = ["a retired sailor who restores wooden boats", "a nurse on night shifts in a children's hospital",
            "a chess coach for teenagers", "a beekeeper in the mountains", "a young architect who loves bridges",
            "a baker who experiments with sourdough", "a museum guide for ancient coins",
            "a marathon runner who teaches physics"]


def synth(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "tulu_mcore.cli.synth", *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def pooled(*args: str) -> str:
    """tulu-synth as a fresh launch would run it, in the session's warm rank (tests/rank_pool.py)."""
    proc = rank_pool.run("tulu_mcore.cli.synth", list(args), 1, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def finished(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    return out


def test_personas_killed_and_rerun_or_split_over_tasks_writes_the_uninterrupted_rows(sft_hf, tmp_path):
    personas = tmp_path / "personas.jsonl"
    personas.write_text("".join(json.dumps({"persona": p}) + "\n" for p in PERSONAS))
    args = ["personas", f"personas={personas}", f"model={sft_hf}", "engine.kind=megatron", "engine.device=cpu",
            "engine.max_model_len=1024", "skills=[code,instruction_following]", "per_skill=3", "shard_size=1",
            "problem.max_new_tokens=32", "solution.max_new_tokens=24", "filters.drop_truncated=false",
            "filters.verify_if=false", "decontam.enabled=false"]
    whole, killed, split = tmp_path / "whole", tmp_path / "killed", tmp_path / "split"
    # two processes at a time (two cores): task 1 of a run split over two tasks starts beside the
    # uninterrupted run (in the session's warm rank), then task 0 beside the run that gets killed
    task1 = synth(*args, f"out={split}", "task=1", "tasks=2")
    out = pooled(*args, f"out={whole}")
    assert "sft: 6 rows" in out, out[-3000:]
    task0 = synth(*args, f"out={split}", "task=0", "tasks=2")
    proc = synth(*args, f"out={killed}")
    deadline = time.time() + 300
    while not (killed / "problems" / "shard-00002.jsonl").is_file():
        assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    shards = sorted(p.name for p in (killed / "problems").glob("shard-*.jsonl"))
    assert 3 <= len(shards) < 6 and not (killed / "solutions").exists(), shards  # stopped mid-way
    out = pooled(*args, f"out={killed}")
    assert f"problems: shard {len(shards) + 1}/6" in out and "problems: shard 1/6" not in out, out[-3000:]
    finished(task0)
    finished(task1)

    want = {name: (whole / name).read_text() for name in ("sft.jsonl", "rlvr.jsonl")}
    rows = [json.loads(line) for line in want["sft.jsonl"].splitlines()]
    assert len(rows) == 6 and {r["skill"] for r in rows} == {"code", "instruction_following"}
    assert all(r["messages"][1]["content"] for r in rows)
    for d in (killed, split):
        assert {name: (d / name).read_text() for name in want} == want, d
    report = json.loads((whole / "report.json").read_text())
    assert report["throughput"]["problems"]["prompts"] == 6 and report["throughput"]["solutions"]["tokens_per_s"] > 0


def test_on_policy_pairs_through_vllm_train_dpo(vllm_python, demo_runs, tmp_path, capsys):
    """The demo's judge (its SFT model taught the short judge template) generates two completions per
    prompt and judges them on vLLM, one engine for both (its run directory and its export are the same
    weights); the pairs train that model with recipe=dpo."""
    from tulu_mcore.cli.synth import main
    from tulu_mcore.data.sources import BUILTIN

    out = tmp_path / "pairs"
    # in this process: the engine is vLLM's own process; the CLI itself needs no CPU runtime
    main(["preferences", f"prompts=[{demo_runs / 'decontam' / 'preference_demo.jsonl'}]", "limit=24",
          f"policy={demo_runs / 'judge'}", f"judge.model={demo_runs / 'judge' / 'hf'}", "judge.template=single",
          "judge.max_new_tokens=8", "completions_per_model=2", "sampling.max_new_tokens=32",
          "engine.kind=vllm", "engine.max_model_len=256", "engine.vllm.enforce_eager=true", f"out={out}",
          f"decontam.eval=[{BUILTIN['builtin:rlvr-heldout']}]"])
    log = capsys.readouterr().out
    assert log.count("on the vllm engine") == 1, log[-3000:]  # policy and judge: one model, one engine
    rep = json.loads((out / "report.json").read_text())
    pairs = [json.loads(line) for line in (out / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == rep["outputs"]["pairs"]["rows"] >= 4, rep
    assert rep["judge_requests"] >= 24 * 2 * 4 and rep["judge_parse_failure_rate"] < 0.5, rep
    assert rep["throughput"]["completions-policy"]["tokens_per_s"] > 0 and rep["throughput"]["judge"]["prompts"] > 0
    for p in pairs:
        assert p["chosen_rating"] > p["rejected_rating"] and p["chosen"][:-1] == p["rejected"][:-1]
        assert p["chosen"][-1]["content"] != p["rejected"][-1]["content"] and len(p["ratings"]) == 2
    run = tmp_path / "dpo"
    train(["recipe=dpo", f"model.init={demo_runs / 'judge'}", f"run.dir={run}", "runtime.device=cpu",
           "train.max_steps=2", "train.global_batch_size=4", f"data.train={out / 'pairs.jsonl'}"])
    m = metrics(run)
    assert len(m) == 2 and all(r["loss"] > 0 for r in m)
