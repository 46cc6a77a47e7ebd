"""The conversion workflows of convert/, on the tiny model (head_dim 32, so that vLLM's CPU build
serves it): HF -> Megatron at a golden experiment's layout (2 ranks) holds exactly the weights of a
one-process conversion; Megatron -> HF from a run directory gives back the original bit for bit (the
tokenizer config gains the chat template it was trained with); the main job's export served by vLLM
greedy-decodes the tokens transformers does, its chat template applied by the server."""

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import torch

from tests.conftest import ROOT, hf_tensors
from tulu_mcore.data.template import CHAT_TEMPLATE

EXPERIMENT = "tulu3_8b_sft"  # TP2: 2 ranks, a layout the tiny model takes (2 KV heads)


def script(name: str, *args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHON": sys.executable}  # the scripts run `python` from PATH by default
    proc = subprocess.run(["bash", str(ROOT / "convert" / name), *map(str, args)], check=False,
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"convert/{name} {args} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def tensors(ckpt):
    """Every tensor of a torch_dist checkpoint, as the layout-independent global tensors it stores."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    from tulu_mcore.checkpoint.reader import CheckpointReader

    md = FileSystemReader(str(ckpt)).read_metadata()
    reader = CheckpointReader(ckpt)
    return {k: reader.read(k) for k, v in md.state_dict_metadata.items() if isinstance(v, TensorStorageMetadata)}


@pytest.fixture(scope="module")
def ckpt_tp2(vllm_hf, tmp_path_factory):
    out = tmp_path_factory.mktemp("workflow") / "ckpt_tp2"
    proc = script("hf_to_mcore.sh", vllm_hf, out, EXPERIMENT)
    return out, proc.stderr


@pytest.fixture(scope="module")
def export(ckpt_tp2, tmp_path_factory):
    # a run directory whose latest checkpoint is the converted one, as training leaves it
    run = tmp_path_factory.mktemp("run")
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "step_00000007").symlink_to(ckpt_tp2[0])
    (run / "checkpoints" / "latest").write_text("step_00000007\n")
    out = tmp_path_factory.mktemp("export") / "hf"
    script("mcore_to_hf.sh", run, out, "--max-shard-size", "300KB")
    return out


def test_hf_to_mcore_at_an_experiment_layout(vllm_hf, ckpt_tp2, tmp_path):
    from tulu_mcore.config.compose import compose

    p = compose([f"experiment={EXPERIMENT}"]).parallel
    assert (p.tp, p.pp) == (2, 1), f"{EXPERIMENT} is no longer TP2: pick another 2-rank experiment for this test"
    out, log = ckpt_tp2
    assert "2 rank(s)" in log and "--nproc-per-node 2" in log and "--tp 2 --pp 1 --vpp 1" in log, log
    ref = tmp_path / "ckpt_1rank"
    assert "1 rank(s)" in script("hf_to_mcore.sh", vllm_hf, ref).stderr
    got, want = tensors(out), tensors(ref)
    assert set(got) == set(want) and len(got) > 10, sorted(set(got) ^ set(want))
    for k in want:
        assert torch.equal(got[k], want[k]), f"{k}: the TP2 conversion differs from the one-process one"


def test_hf_to_mcore_reads_the_golden_layout_from_the_configs(tmp_path):
    # 405B: TP8 x PP8 with 2 virtual stages and an uneven pipeline layout, as conf/ composes it
    from tulu_mcore.cli.convert import build_parser
    from tulu_mcore.config.compose import compose

    p = compose(["experiment=tulu3_405b_sft"]).parallel
    missing = script("hf_to_mcore.sh", tmp_path, "out", "tulu3_405b_sft", "--dry-run", check=False)
    assert missing.returncode == 2 and "no config.json" in missing.stderr, missing.stderr
    (tmp_path / "config.json").write_text("{}")
    cmd = script("hf_to_mcore.sh", tmp_path, "out", "tulu3_405b_sft", "--dry-run").stderr
    assert f"{p.tp * p.pp} rank(s)" in cmd and f"--nproc-per-node {p.tp * p.pp} " in cmd, cmd
    opts = cmd.split(" hf-to-mcore ", 1)[1].split()[2:]
    args = build_parser().parse_args(["hf-to-mcore", "hf", "out", *opts])  # tulu-convert takes them
    assert (args.tp, args.pp, args.vpp, args.pipeline_layout) == (p.tp, p.pp, p.vpp, p.pipeline_layout), cmd
    bad = script("hf_to_mcore.sh", tmp_path, "out", "tulu3_405b_sftt", check=False)
    assert bad.returncode == 2 and "unknown experiment 'tulu3_405b_sftt'" in bad.stderr, bad.stderr


def test_mcore_to_hf_from_a_run_directory_is_bit_identical(vllm_hf, export):
    a, b = hf_tensors(vllm_hf), hf_tensors(export)
    assert set(a) == set(b), sorted(set(a) ^ set(b))
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), f"{name} changed in the round trip"
    assert len(set(json.loads((export / "model.safetensors.index.json").read_text())["weight_map"].values())) > 1
    assert json.loads((export / "config.json").read_text()) == json.loads((vllm_hf / "config.json").read_text())
    tokenizer = sorted(vllm_hf.glob("tokenizer*"))  # what serving needs travels with the weights
    assert tokenizer, vllm_hf
    for f in tokenizer:
        if f.name == "tokenizer_config.json":  # the same, plus the chat template it was trained with
            got, want = json.loads((export / f.name).read_text()), json.loads(f.read_text())
            assert got.pop("chat_template") == CHAT_TEMPLATE and got == {k: v for k, v in want.items()
                                                                        if k != "chat_template"}
            continue
        assert (export / f.name).read_bytes() == f.read_bytes(), f"{f.name} missing or changed in the export"


def transformers_greedy(hf_dir, prompt: list[int], n: int) -> list[int]:
    from transformers import LlamaForCausalLM

    model = LlamaForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(n):  # plain argmax, EOS included, as vLLM with ignore_eos
            ids = torch.cat([ids, model(ids).logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return ids[0, len(prompt):].tolist()


def post(url: str, body: dict, timeout: float = 120) -> dict:
    req = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


@pytest.mark.vllm
def test_serve_vllm_completes_like_transformers(vllm_python, demo_runs, tmp_path):
    """The main job's final export (its RLVR model) served by vLLM as it is: greedy tokens equal
    transformers', for token ids and for a chat request, which the server renders with the export's own
    template (Tülu's, as trained)."""
    from transformers import AutoTokenizer

    from tulu_mcore.evaluation.serve import stop
    from tulu_mcore.runtime.distributed import free_port

    export = demo_runs / "rlvr" / "hf"

    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "TULU_VLLM_PYTHON": vllm_python, "PYTHON": sys.executable}
    cmd = ["bash", str(ROOT / "convert" / "serve_vllm.sh"), str(export), "--host", "127.0.0.1", "--port", str(port),
           "--served-model-name", "tiny", "--dtype", "float32", "--max-model-len", "128", "--enforce-eager",
           "--generation-config", "vllm"]
    with open(log, "wb") as out:  # its own session: stopping it stops vLLM's engine processes too
        server = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                  start_new_session=True)
    try:
        t0 = time.time()
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=5) as r:
                    models = json.loads(r.read())
                break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                if server.poll() is not None:
                    pytest.fail(f"serve_vllm.sh exited ({server.returncode}) while starting:\n"
                                f"{log.read_text()[-6000:]}")
                if time.time() - t0 > 600:
                    pytest.fail(f"vLLM did not answer within 600 s:\n{log.read_text()[-6000:]}")
                time.sleep(2)
        assert [m["id"] for m in models["data"]] == ["tiny"], models
        prompt = [0, 17, 94, 233, 5, 401, 62, 311]
        got = post(f"http://127.0.0.1:{port}/v1/completions",
                   {"model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0, "ignore_eos": True,
                    "return_token_ids": True})
        tokens = got["choices"][0]["token_ids"]
        want = transformers_greedy(export, prompt, 8)
        assert tokens == want, f"vLLM greedy {tokens} != transformers greedy {want}"
        assert got["choices"][0]["text"] and got["usage"]["completion_tokens"] == 8, got
        # a chat request: the server applies the export's template
        messages = [{"role": "user", "content": "What is 3 + 4?"}]
        tok = AutoTokenizer.from_pretrained(export)
        ids = tok.apply_chat_template(messages, add_generation_prompt=True)
        ids = ids if isinstance(ids, list) else ids["input_ids"]
        chat = post(f"http://127.0.0.1:{port}/v1/chat/completions",
                    {"model": "tiny", "messages": messages, "max_tokens": 8, "temperature": 0, "ignore_eos": True,
                     "return_token_ids": True})
        want = transformers_greedy(export, ids, 8)
        assert chat.get("prompt_token_ids", ids) == ids, (chat.get("prompt_token_ids"), ids)
        choice = chat["choices"][0]
        if "token_ids" in choice:
            assert choice["token_ids"] == want, (choice["token_ids"], want)
        assert choice["message"]["content"] == tok.decode(want, skip_special_tokens=True), (choice, want)
        # tulu-eval's server backend against it: the held-out answers the demo's transformers pass gave
        from tulu_mcore.evaluation.harness import Settings, evaluate

        ev = tmp_path / "eval"
        rec = evaluate(str(export), Settings(tasks=["demo_tulu"], backend="server", url=f"http://127.0.0.1:{port}/v1",
                                             data=str(demo_runs / "heldout"), max_length=128, limit=8), ev)
        hf_rec = json.loads((demo_runs / "eval" / "rlvr" / "results.json").read_text())
        assert rec["scores"]["demo_tulu"]["n"] == 8 and rec["settings"]["backend"] == "server"

        def responses(d, n):
            return [json.loads(line)["resps"][0][0] for line in (d / "samples_demo_tulu.jsonl").read_text().splitlines()][:n]

        assert responses(ev, 8) == responses(demo_runs / "eval" / "rlvr", 8)
        assert hf_rec["settings"]["backend"] == "hf"
    finally:
        stop(server)
