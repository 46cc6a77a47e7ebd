"""SFT end to end through `tulu-train`: parity with transformers, packing, layout equivalence, exact
resume after SIGKILL, stop on SIGTERM, bad data, extending a finished run."""

import json
import os
import signal
import subprocess
import time

import psutil
import pytest
import torch

from tests.conftest import builtin_rows, metrics, open_instruct_labels, read_json, run_worker, train
from tulu_mcore.runtime.launch import torchrun_cmd

CONVERSATION = {"messages": [
    {"role": "system", "content": "You are a careful math tutor. Show the calculation."},
    {"role": "user", "content": "Zoe has 24 cards and gets 20 more. How many cards does Zoe have now?"},
    {"role": "assistant", "content": "24 + 20 = 44. The answer is 44."},
    {"role": "user", "content": "And if Zoe then gets 3 more?"},
    {"role": "assistant", "content": "44 + 3 = 47. The answer is 47."},
]}


def read_yaml(path):
    import yaml

    return yaml.safe_load(path.read_text())


def sft_args(run_dir, cache, *extra):
    return ["recipe=sft", f"run.dir={run_dir}", f"data.cache_dir={cache}", "runtime.device=cpu",
            "metrics.progress=false", *extra]


def reference_sum_ce(hf_dir, messages) -> float:
    """transformers' summed cross entropy over the trained tokens; text and labels from the test's own
    open-instruct-style reference, independent of tulu_mcore's template code."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(hf_dir)
    ids, labels = open_instruct_labels(tok, messages)
    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1]
    target = torch.tensor(labels[1:])
    return torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()


def reference_token_mean_ce(hf_dir, conversations) -> float:
    """transformers' cross entropy per trained token over `conversations` (labels as reference_sum_ce)."""
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = LlamaForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    total = tokens = 0.0
    for messages in conversations:
        ids, labels = open_instruct_labels(tok, messages)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0, :-1]
        target = torch.tensor(labels[1:])
        total += torch.nn.functional.cross_entropy(logits, target, ignore_index=-100, reduction="sum").item()
        tokens += (target != -100).sum().item()
    return total / tokens


@pytest.mark.parametrize("tp", [1, pytest.param(2, marks=pytest.mark.fast)])
def test_first_step_loss_equals_transformers(sft_hf, data_cache, tmp_path, tp):
    data = tmp_path / "one.jsonl"
    data.write_text(json.dumps(CONVERSATION) + "\n")
    run = tmp_path / "run"
    train(sft_args(run, data_cache, f"model.init={sft_hf}", f"model.tokenizer={sft_hf}", f"data.train={data}",
                   "train.global_batch_size=1", "train.max_steps=1", "optim.lr=0", "loss.reduction=sum",
                   "data.shuffle=false", f"parallel.tp={tp}", "train.export_hf=false"), nproc=tp)
    [step1] = metrics(run)
    ref = reference_sum_ce(sft_hf, CONVERSATION["messages"])
    assert step1["sequences"] == 1 and step1["trained_tokens"] > 20
    assert abs(step1["loss"] - ref) <= 1e-5 * abs(ref), (step1["loss"], ref)


@pytest.mark.parametrize("layout,nproc", [("dp", 1), ("cp2", 2), ("tp2_sp", 2)])
def test_packed_loss_equals_unpacked(tiny_ckpt, data_cache, tmp_path, layout, nproc):
    out = tmp_path / "pvu.json"
    run_worker("packed_vs_unpacked.py", [tiny_ckpt["untied"], out, f"parallel={layout}",
                                         f"data.cache_dir={data_cache}"], nproc=nproc)
    got = read_json(out)
    assert got["packed"][1] == got["unpacked"][1] > 100  # the same trained tokens
    assert abs(got["packed"][0] - got["unpacked"][0]) <= 1e-6 * abs(got["unpacked"][0]), got
    # the GPU path (varlen attention, sync-free RoPE and CP positions) reads nothing back to the host
    # in forward + backward, and computes what the CPU path does
    assert got["fast_path_read_count"] == 0, got["fast_path_reads"]
    assert got["fast_vs_cpu_max_diff"] < 1e-5, got
    if layout != "cp2":  # the CPU's per-document attention reads the boundaries: the counter sees them
        assert got["cpu_path_read_count"] > 0, got


EQUIV = ["train.global_batch_size=8", "train.seq_length=128", "optim.lr=1e-3", "train.max_steps=3",
         "optim.warmup_ratio=0", "train.export_hf=false"]


@pytest.fixture(scope="module")
def single_rank_run(sft_hf, data_cache, tmp_path_factory):
    run = tmp_path_factory.mktemp("sft-ref") / "run"
    train(sft_args(run, data_cache, f"model.init={sft_hf}", *EQUIV))
    return metrics(run)


def test_single_rank_reference_learns(single_rank_run):
    assert [r["step"] for r in single_rank_run] == [1, 2, 3]
    assert single_rank_run[2]["loss"] < single_rank_run[0]["loss"]
    # one rank, no CP or SP: rows end where their last conversation ends, so nothing is padding
    assert all(r["packing_efficiency"] == 1.0 for r in single_rank_run)


@pytest.mark.parametrize("layout", ["tp2", "pp2", "dp", "tp2_sp", "cp2", "pp2_vpp2"])
def test_layouts_reproduce_single_rank(single_rank_run, sft_hf, data_cache, tmp_path, layout):
    run = tmp_path / "run"
    train(sft_args(run, data_cache, f"model.init={sft_hf}", f"parallel={layout}", *EQUIV), nproc=2)
    got = metrics(run)
    for ref, g in zip(single_rank_run, got):
        assert g["trained_tokens"] == ref["trained_tokens"] and g["sequences"] == ref["sequences"] == 8
        assert abs(g["loss"] - ref["loss"]) <= 1e-5 * abs(ref["loss"]), (layout, g["step"], g["loss"], ref["loss"])
        assert abs(g["grad_norm"] - ref["grad_norm"]) <= 1e-5 * abs(ref["grad_norm"])


def _start(args, nproc):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.Popen(torchrun_cmd("tulu_mcore.cli.train", [str(a) for a in args], nproc),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)


def _wait_for(predicate, proc, timeout=180):
    t0 = time.time()
    while not predicate():
        assert proc.poll() is None, f"training ended early:\n{proc.communicate()[1][-4000:]}"
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.01)


@pytest.mark.parametrize("layout", ["tp2", "pp2"])
def test_resume_after_sigkill_is_exact(sft_hf, data_cache, tmp_path, layout):
    common = [f"model.init={sft_hf}", f"parallel={layout}", "train.global_batch_size=8", "train.seq_length=128",
              "optim.lr=1e-3", "train.max_steps=12", "train.save_interval=3", "train.export_hf=false"]
    straight = tmp_path / "straight"
    train(sft_args(straight, data_cache, *common), nproc=2)
    run = tmp_path / "killed"
    proc = _start(sft_args(run, data_cache, *common), 2)
    marker = run / "checkpoints" / "latest"
    _wait_for(lambda: marker.is_file() and marker.read_text().strip() == "step_00000003", proc)
    # the whole job, as a node failure would: torchrun starts its ranks in sessions of their own
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        p.kill()
    psutil.wait_procs(tree, timeout=30)
    proc.communicate()
    latest = marker.read_text().strip()  # step 3, or a later one written before the kill arrived
    assert latest != "step_00000012", "the run ended before it was killed"
    resumed = train(sft_args(run, data_cache, *common), nproc=2)  # the same command again
    assert f"resumed from {run / 'checkpoints' / latest}" in resumed.stdout
    a, b = metrics(straight), metrics(run)
    assert [r["step"] for r in b] == list(range(1, 13))  # each step once: the resumed run's replace the rest
    for x, y in zip(a, b):
        assert abs(x["loss"] - y["loss"]) <= 1e-6 * abs(x["loss"]), (x["step"], x["loss"], y["loss"])
        assert x["lr"] == y["lr"]


def test_time_limit_saves_and_stops_before_it(data_cache, tmp_path):
    """run.time_limit shorter than the run: the run saves and exits before the limit (judging from its
    measured step and save times); a rerun resumes where it stopped, no step repeated."""
    run = tmp_path / "run"
    args = sft_args(run, data_cache, "model=tiny", "train.save_interval=100000", "train.export_hf=false")
    t0 = time.time()
    first = train(args + ["train.max_steps=100000", "run.time_limit=0:20"], fresh=True)  # from the process's start
    assert time.time() - t0 < 20 and "stopping before run.time_limit" in first.stdout, first.stdout[-2000:]
    done = len(metrics(run))
    assert done > 1 and (run / "checkpoints" / f"step_{done:08d}").is_dir()
    second = train(args + [f"train.max_steps={done + 3}"])
    assert f"resumed from {run / 'checkpoints' / f'step_{done:08d}'}" in second.stdout
    assert [r["step"] for r in metrics(run)] == list(range(1, done + 4))  # none repeated


def test_a_damaged_checkpoint_is_detected_and_the_previous_one_resumed(data_cache, tmp_path):
    """64 flipped bytes in the latest checkpoint's shard: the resume names the damaged file and goes on
    from the newest intact checkpoint, training the lost steps again (each step logged once)."""
    run = tmp_path / "run"
    args = sft_args(run, data_cache, "model=tiny", "train.save_interval=2", "train.keep_last=2",
                    "train.export_hf=false")
    train(args + ["train.max_steps=4"])
    shard = sorted((run / "checkpoints" / "step_00000004").glob("*.distcp"))[0]
    data = bytearray(shard.read_bytes())
    data[len(data) // 2:len(data) // 2 + 64] = bytes(b ^ 0xFF for b in data[len(data) // 2:len(data) // 2 + 64])
    shard.write_bytes(bytes(data))
    again = train(args + ["train.max_steps=6"])
    assert f"checkpoint {shard.parent} is damaged: {shard.name} (contents differ" in again.stdout, again.stdout[-2000:]
    assert "resuming from step_00000002, the newest intact checkpoint" in again.stdout
    assert [r["step"] for r in metrics(run)] == list(range(1, 7))


def test_sigterm_on_one_rank_saves_and_stops_all(data_cache, tmp_path):
    run = tmp_path / "run"
    args = sft_args(run, data_cache, "parallel=dp", "train.max_steps=400", "train.save_interval=1000",
                    "train.global_batch_size=8", "train.seq_length=128", "train.export_hf=false")
    proc = _start(args, 2)
    _wait_for(lambda: len(metrics(run)) >= 2 if (run / "metrics.jsonl").is_file() else False, proc)
    workers = [c for c in psutil.Process(proc.pid).children(recursive=True) if "python" in c.name()]
    workers[-1].send_signal(signal.SIGTERM)  # like a Slurm signal that reached one task first
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-4000:]
    stopped_at = metrics(run)[-1]["step"]
    assert 2 <= stopped_at < 400
    assert (run / "checkpoints" / "latest").read_text().strip() == f"step_{stopped_at:08d}"
    assert "stopping on" in out and "rerun the same command to resume" in out
    resumed = train(args[:-4] + ["train.max_steps=" + str(stopped_at + 2), "train.global_batch_size=8",
                                 "train.seq_length=128", "train.export_hf=false"], nproc=2)
    assert f"resumed from {run / 'checkpoints' / f'step_{stopped_at:08d}'}" in resumed.stdout
    assert [r["step"] for r in metrics(run)] == list(range(1, stopped_at + 3))


def test_bad_data_strict_and_skip(data_cache, tmp_path):
    good = [json.dumps(CONVERSATION)] * 12
    bad = [
        "{this is not json",
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "wizard", "content": "x"}]}),
        json.dumps({"messages": []}),
        json.dumps({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}),
        json.dumps({"messages": [{"role": "user", "content": "count"},
                                 {"role": "assistant", "content": " ".join(["river"] * 200)}]}),
    ]
    data = tmp_path / "mixed.jsonl"
    data.write_text("\n".join(good[:3] + bad + good[3:]) + "\n")
    base = sft_args(tmp_path / "run", data_cache, f"data.train={data}", "train.max_steps=1",
                    "train.global_batch_size=4", "train.seq_length=128", "data.truncate=false",
                    "train.export_hf=false")
    strict = train(base, check=False)
    assert strict.returncode == 2 and "Traceback" not in strict.stderr
    assert f"{data}:4: not valid JSON" in strict.stderr and "data.on_error=skip" in strict.stderr
    skip = train(base + ["data.on_error=skip"])
    summary = next(line for line in skip.stdout.splitlines() if "data:" in line)
    assert "12 examples (17 read" in summary
    for reason in ("1 invalid JSON", "1 unknown role", "1 empty messages", "1 turns out of order",
                   "1 longer than max_seq_len"):
        assert reason in summary, summary


def test_extending_a_finished_run(data_cache, tmp_path):
    run = tmp_path / "run"
    args = sft_args(run, data_cache, "model=tiny")
    held = builtin_rows(tmp_path / "held.jsonl", "builtin:sft-demo", 6)
    train(args + ["train.max_steps=8", f"eval.data={held}", "eval.every_steps=4"], nproc=2)
    assert [r["step"] for r in metrics(run)] == list(range(1, 9))
    assert (run / "hf" / "model.safetensors.index.json").is_file()
    # held-out evaluation (eval.data) after steps 4 and 8; the last is transformers' loss on the export
    evals = [r for r in metrics(run) if "eval/loss" in r]
    assert [r["step"] for r in evals] == [4, 8] and evals[-1]["eval/sequences"] == 6
    want = reference_token_mean_ce(run / "hf", [json.loads(line)["messages"] for line in held.read_text().splitlines()])
    assert abs(evals[-1]["eval/loss"] - want) <= 1e-4 * want, (evals[-1]["eval/loss"], want)
    # a new LR (after a loss spike) applies from the resumed step, said in the log
    lr = read_yaml(run / "config.yaml")["optim"]["lr"]
    again = train(args + ["train.max_steps=12", f"optim.lr={lr / 10}"], nproc=2)
    assert "resumed from" in again.stdout and f"optim.lr changed on resume: {lr!r} -> {lr / 10!r}" in again.stdout
    records = metrics(run)
    assert [r["step"] for r in records] == list(range(1, 13))  # each step once
    assert 0 < records[8]["lr"] <= lr / 10 < records[7]["lr"]
    assert len(list((run / "configs").glob("*.yaml"))) == 2  # each start's config kept
    losses = [r["loss"] for r in records]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3
    for r in records:
        assert r["tokens_per_s"] > 0 and r["tflops_per_gpu"] > 0 and r["mfu"] is None  # no peak on CPU
    # the export of the final checkpoint loads in transformers
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(run / "hf")
    assert model.config.vocab_size == 512
    assert_serves_as_trained(run / "hf")


def assert_serves_as_trained(hf_dir):
    """An export's chat template renders exactly the training text (tulu-data inspect's), with and without
    a system turn, over several turns; the generation prompt is the RL prompt's; no BOS; the generation
    config stops at the EOS every trained turn ended with."""
    from transformers import AutoTokenizer, GenerationConfig

    from tulu_mcore.data.rlvr import prompt_text
    from tulu_mcore.data.template import render

    tok = AutoTokenizer.from_pretrained(hf_dir)
    conversations = [
        [{"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye\nnow"},
         {"role": "assistant", "content": ""}],
    ]
    for messages in conversations:
        assert tok.apply_chat_template(messages, tokenize=False) == render(messages, tok.eos_token)[0]
        prompt = messages[:-1]
        assert tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True) == prompt_text(prompt, tok.eos_token)
        ids = tok.apply_chat_template(prompt, add_generation_prompt=True)
        ids = ids if isinstance(ids, list) else ids["input_ids"]
        assert ids == tok(prompt_text(prompt, tok.eos_token), add_special_tokens=False)["input_ids"] and ids[0] != tok.bos_token_id
    assert GenerationConfig.from_pretrained(hf_dir).eos_token_id == tok.eos_token_id


def test_an_export_replaces_the_base_tokenizers_chat_template(tmp_path):
    """A model.init tokenizer's own template (Meta's, here a stand-in) is replaced in the export: the
    model was trained on Tülu's."""
    import shutil

    from tulu_mcore.arch import LlamaArch
    from tulu_mcore.convert.mcore_to_hf import serve_as_trained
    from tulu_mcore.data.sources import TINY_TOKENIZER

    out = tmp_path / "hf"
    shutil.copytree(TINY_TOKENIZER, out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    (out / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": "{{ '<|start_header_id|>' }}"}))
    (out / "chat_template.jinja").write_text("{{ 'meta' }}")
    serve_as_trained(out, LlamaArch(512, 64, 128, 2, 4, 2, 16, bos_token_id=0, eos_token_id=1))
    assert not (out / "chat_template.jinja").exists()
    assert_serves_as_trained(out)
    # a tokenizer transformers cannot load (its vocabulary file missing): config.json's EOS, with a warning
    lone = tmp_path / "lone"
    lone.mkdir()
    shutil.copy2(out / "tokenizer_config.json", lone / "tokenizer_config.json")
    serve_as_trained(lone, LlamaArch(512, 64, 128, 2, 4, 2, 16, bos_token_id=0, eos_token_id=7))
    assert json.loads((lone / "generation_config.json").read_text())["eos_token_id"] == 7
    assert json.loads((lone / "tokenizer_config.json").read_text())["chat_template"]


@pytest.mark.parametrize("recompute", ["selective", "full"])
def test_activation_recompute_changes_nothing(single_rank_run, sft_hf, data_cache, tmp_path, recompute):
    run = tmp_path / "run"
    train(sft_args(run, data_cache, f"model.init={sft_hf}", f"train.recompute={recompute}", *EQUIV))
    for ref, g in zip(single_rank_run, metrics(run)):
        assert abs(g["loss"] - ref["loss"]) <= 1e-5 * abs(ref["loss"])
        assert abs(g["grad_norm"] - ref["grad_norm"]) <= 1e-5 * abs(ref["grad_norm"])


def test_bf16_with_fp32_main_weights_tracks_fp32(sft_hf, data_cache, tmp_path):
    common = [f"model.init={sft_hf}", "train.global_batch_size=8", "train.seq_length=128", "optim.lr=1e-3",
              "train.max_steps=4", "optim.warmup_ratio=0"]
    runs = {}
    for precision in ("fp32", "bf16"):
        runs[precision] = tmp_path / precision
        train(sft_args(runs[precision], data_cache, f"precision={precision}", *common), nproc=2)
    fp32, bf16 = metrics(runs["fp32"]), metrics(runs["bf16"])
    assert len(bf16) == 4 and not any(r["skipped"] for r in bf16)
    for a, b in zip(fp32, bf16):  # the same batches: bf16 rounding only
        assert abs(a["loss"] - b["loss"]) <= 2e-2 * abs(a["loss"]), (a["step"], a["loss"], b["loss"])
    exported = json.loads((runs["bf16"] / "hf" / "config.json").read_text())
    assert exported.get("torch_dtype", exported.get("dtype")) == "bfloat16"  # exported in the training dtype


def test_a_full_disk_is_one_clear_error_and_loses_no_checkpoint(data_cache, tmp_path):
    """run.dir on a 1 MiB file system: the first save stops the run with "no space left on <path>" (the
    size it needs and what is free), no traceback, no partial checkpoint left behind."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("mounting a small tmpfs needs root")
    try:
        run = mount / "run"
        proc = train(sft_args(run, data_cache, "train.max_steps=2", "train.export_hf=false"), check=False)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
        assert (f"error: no space left on the file system of {run / 'checkpoints' / 'step_00000002.partial'}: "
                "the checkpoint needs ~") in proc.stderr and "KiB are free" in proc.stderr, proc.stderr[-2000:]
        assert not list((run / "checkpoints").glob("*.partial")) and not (run / "checkpoints" / "latest").exists()
        assert [m["step"] for m in metrics(run)] == [1, 2]  # trained; only the save did not fit
    finally:
        subprocess.run(["umount", str(mount)], check=False)


def test_ranks_exit_when_their_launcher_is_killed(data_cache, tmp_path):
    """torchrun SIGKILLed mid-run: its ranks notice within seconds and exit (an orphaned rank would go on
    writing the run's checkpoints and metrics beside a restarted run)."""
    run = tmp_path / "run"
    proc = _start(sft_args(run, data_cache, "parallel=dp", "train.max_steps=400", "train.global_batch_size=8",
                           "train.seq_length=128", "train.export_hf=false", "metrics.plots=false"), 2)
    _wait_for(lambda: (run / "metrics.jsonl").is_file() and len(metrics(run)) >= 1, proc)
    ranks = [c for c in psutil.Process(proc.pid).children(recursive=True) if "python" in c.name()]
    assert len(ranks) == 2
    proc.kill()  # torchrun only; its ranks are left behind
    gone, alive = psutil.wait_procs(ranks, timeout=15)
    for r in alive:
        r.kill()
    assert not alive, f"{len(alive)} rank(s) outlived their launcher"
    _, err = proc.communicate(timeout=30)  # the ranks share torchrun's stderr: their last words are here
    # the first to notice exits; a peer still in a collective with it may fail there first
    assert f"its launcher (torchrun, pid {proc.pid}) exited: stopping this rank" in err, err[-2000:]
