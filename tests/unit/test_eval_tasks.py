"""tulu-eval's `*_tulu` tasks: a scripted model with known answers gets the exact expected score for every
task's answer extraction and metric (each expectation written out from the benchmark's definition), the
prompts are the Tülu chat format with the shots as turns and no BOS, and the presets list every task and
every benchmark they cannot run."""

import json
import math
import re

import pytest
from lm_eval.api.model import LM

from tulu_mcore.data.template import CHAT_TEMPLATE
from tulu_mcore.evaluation import presets, scoring
from tulu_mcore.evaluation.harness import TASKS_DIR, Settings, run_tasks, task_configs


class ScriptedLM(LM):
    """Answers by the key found in the prompt's last question: a response (or a list, one per repeat) for
    generation, a log-likelihood per (key, choice) for multiple choice. Renders chats as lm-eval's HF model
    does, with the built-in tokenizer carrying the Tülu template (an export's)."""

    def __init__(self, responses: dict, lls: dict):
        super().__init__()
        from transformers import AutoTokenizer

        from tulu_mcore.data.sources import TINY_TOKENIZER

        self.responses, self.lls, self.calls, self.prompts = responses, lls, {}, []
        self.tok = AutoTokenizer.from_pretrained(TINY_TOKENIZER)
        self.tok.chat_template = CHAT_TEMPLATE

    @property
    def tokenizer_name(self):
        return "scripted"

    def chat_template(self, chat_template=False):
        return CHAT_TEMPLATE

    def apply_chat_template(self, chat_history, add_generation_prompt=True):
        return self.tok.apply_chat_template(chat_history, tokenize=False, add_generation_prompt=add_generation_prompt,
                                            continue_final_message=not add_generation_prompt)

    def _key(self, prompt: str, table) -> str:
        tail = re.split(r"<\|user\|>\n|Passage: ", prompt)[-1]
        hits = [k for k in table if (k[0] if isinstance(k, tuple) else k) in tail]
        assert len(hits) >= 1, f"no scripted answer for: {tail[:200]!r}"
        return hits

    def generate_until(self, requests):
        out = []
        for r in requests:
            prompt = r.args[0]
            self.prompts.append(prompt)
            key = self._key(prompt, self.responses)[0]
            resp = self.responses[key]
            if isinstance(resp, list):  # one per sample of a repeated request
                i = self.calls.get(key, 0)
                self.calls[key] = i + 1
                resp = resp[i % len(resp)]
            out.append(resp)
        return out

    def loglikelihood(self, requests):
        out = []
        for r in requests:
            context, continuation = r.args
            self.prompts.append(context)
            keys = [k for k in self._key(context, self.lls) if k[1] == continuation.strip()]
            out.append((self.lls[keys[0]] if keys else -20.0, False))
        return out

    def loglikelihood_rolling(self, requests):
        raise NotImplementedError


def write(root, benchmark, rows, fewshot=None):
    d = root / benchmark
    d.mkdir(parents=True)
    (d / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    if fewshot is not None:
        (d / "fewshot.jsonl").write_text("".join(json.dumps(r) + "\n" for r in fewshot))


def mmlu_row(key, subject, answer):
    return {"question": f"{key} which one?", "choices": ["w", "x", "y", "z"], "answer": answer, "subject": subject}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    write(root, "gsm8k", [{"question": "[g1] apples?", "answer": "12"}, {"question": "[g2] cost?", "answer": "1234"},
                          {"question": "[g3] pens?", "answer": "7"}, {"question": "[g4] cats?", "answer": "so #### 5"}])
    write(root, "minerva_math", [
        {"problem": "[m1] half?", "answer": "\\frac{1}{2}", "subject": "algebra"},
        {"problem": "[m2] three?", "solution": "It is $\\boxed{3}$.", "subject": "algebra"},
        {"problem": "[m3] area?", "answer": "10", "subject": "geometry"}])
    write(root, "ifeval", [
        {"key": 1, "prompt": "[i1] no commas", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"key": 2, "prompt": "[i2] no commas", "instruction_id_list": ["punctuation:no_comma"], "kwargs": [{}]},
        {"key": 3, "prompt": "[i3] lower", "instruction_id_list": ["change_case:english_lowercase"],
         "kwargs": [{}]}])
    write(root, "bbh", [{"input": "[b1] not False is", "target": "True", "subject": "boolean_expressions"},
                        {"input": "[b2] True and False is", "target": "False", "subject": "boolean_expressions"},
                        {"input": "[b3] Does Ka tell the truth?", "target": "Yes", "subject": "web_of_lies"}])
    shots = [{"passage": f"P{i}", "question": f"shot {i}?", "answers": [f"a{i}"]} for i in range(3)]
    write(root, "drop", [{"passage": "[d1] seven goals", "question": "How many?", "answers": [["7"]]},
                         {"passage": "[d2] John Smith scored", "question": "Who?", "answers": [["John Smith"]]}], shots)
    write(root, "popqa", [{"question": f"[shot{i}] capital?", "possible_answers": [f"c{i}"]} for i in range(15)]
          + [{"question": "[p1] capital of France?", "possible_answers": ["Paris"]},
             {"question": "[p2] capital of Peru?", "possible_answers": ["Lima"]}])
    write(root, "truthfulqa", [
        {"question": "[t1] q?", "mc2_targets": {"choices": ["A1", "A2", "A3"], "labels": [1, 1, 0]}},
        {"question": "[t2] q?", "mc2_targets": {"choices": ["B1", "B2"], "labels": [1, 0]}}])
    dev = [mmlu_row(f"[dev-{s}-{i}]", s, i % 4) for s in ("anatomy", "virology") for i in range(5)]
    write(root, "mmlu", [mmlu_row("[u1]", "anatomy", 2), mmlu_row("[u2]", "anatomy", 0),
                         mmlu_row("[u3]", "virology", 1)], dev)
    he = [{"task_id": "T/0", "prompt": "def add(a, b):\n    \"\"\"[h1] a + b\"\"\"\n",
           "test": "def check(f):\n    assert f(1, 2) == 3\n", "entry_point": "add"}]
    write(root, "humaneval", he)
    write(root, "humanevalplus", he)
    write(root, "mmlu_pro", [
        {"question": "[r1] ten?", "options": list("abcdefghij"), "answer": "J", "category": "law"},
        {"question": "[r2] ten?", "options": list("abcdefghij"), "answer": "A", "category": "math"}])
    write(root, "gpqa", [{"question": "[q1] ?", "choices": ["a", "b", "c", "d"], "answer": 3},
                         {"question": "[q2] ?", "choices": ["a", "b", "c", "d"], "answer": 0}])
    write(root, "agieval_en", [{"question": "[a1] ?", "choices": list("abcde"), "answer": 1, "subject": "sat-math"},
                               {"question": "[a2] ?", "choices": list("abcde"), "answer": 1, "subject": "lsat-ar"}])
    write(root, "deepmind_math", [{"question": "[dm1] 6*7", "answer": "42", "subject": "arithmetic"},
                                  {"question": "[dm2] 1/3", "answer": "1/3", "subject": "arithmetic"},
                                  {"question": "[dm3] solve", "answer": "6", "subject": "algebra"}])
    bcb_test = ("import unittest\nclass TestCases(unittest.TestCase):\n    def test_one(self):\n"
                "        self.assertEqual(task_func(1), 2)\n")
    write(root, "bigcodebench_hard", [
        {"task_id": "B/0", "instruct_prompt": "[c1] Write task_func(x) returning x + 1.", "test": bcb_test,
         "entry_point": "task_func"},
        {"task_id": "B/1", "instruct_prompt": "[c2] Write task_func(x) returning x + 1.", "test": bcb_test,
         "entry_point": "task_func"}])
    write(root, "demo", [
        {"messages": [{"role": "user", "content": "[e1] Mia has 5 and gets 7 more."}], "ground_truth": "12",
         "dataset": "gsm8k"},
        {"messages": [{"role": "user", "content": "[e2] Write 'hello' in capitals."}],
         "ground_truth": json.dumps({"func_name": "validate_uppercase"}), "dataset": "ifeval"},
        {"messages": [{"role": "user", "content": "[e3] Write 'moon' in capitals."}],
         "ground_truth": json.dumps({"func_name": "validate_uppercase"}), "dataset": "ifeval"}])
    return root


RESPONSES = {
    "[g1]": "3 * 4 = 12. The answer is 12.", "[g2]": "So she pays $1,234.", "[g3]": "The answer is 7. Then 8 more.",
    "[g4]": "I do not know.",
    "[m1]": "So it is $\\boxed{\\frac{2}{4}}$.", "[m2]": "Final Answer: The final answer is $4$. I hope it is correct.",
    "[m3]": "The area is $10$.",
    "[i1]": "hello world", "[i2]": "Sure, here it is:\nhello world", "[i3]": "HELLO",
    "[b1]": "not False = True. So the answer is True.", "[b2]": "So the answer is True.",
    "[b3]": "Ka lies... So the answer is Yes.",
    "[d1]": " 7\nPassage: more", "[d2]": " Smith",
    "[p1]": " It is paris.", "[p2]": " Quito",
    "[u1]": "Because ... Therefore, the answer is: C", "[u2]": "Maybe the answer is (A)... Therefore, the answer is: B",
    "[u3]": "Therefore, the answer is: B",
    "[h1]": ["    return a + b\n```"] * 5 + ["    return a - b\n```"] * 15,
    "[r1]": "Therefore, the answer is (J).", "[r2]": "Therefore, the answer is (K).",
    "[q1]": "Therefore, the answer is (D)", "[q2]": "Therefore, the answer is (B)",
    "[a1]": "Therefore, the answer is (B)", "[a2]": "Therefore, the answer is (C)",
    "[dm1]": "6*7=42. Therefore, the final answer is 42. I hope it is correct.",
    "[dm2]": "Therefore, the final answer is $\\frac{1}{3}$. I hope it is correct.", "[dm3]": "x = 5",
    "[c1]": "Here:\n```python\ndef task_func(x):\n    return x + 1\n```\nDone.",
    "[c2]": "```python\ndef task_func(x):\n    return x - 1\n```",
    "[e1]": "5 + 7 = 12. The answer is 12.", "[e2]": "HELLO", "[e3]": "moon",
}
LLS = {("[t1]", "A1"): math.log(0.5), ("[t1]", "A2"): math.log(0.25), ("[t1]", "A3"): math.log(0.25),
       ("[t2]", "B1"): math.log(0.2), ("[t2]", "B2"): math.log(0.8),
       ("[u1]", "C"): -0.1, ("[u2]", "B"): -0.1, ("[u3]", "B"): -0.1}

# each task's expected primary score, from the benchmark's definition
EXPECTED = {
    "gsm8k_tulu": 2 / 4,  # the last number: 12 and $1,234. right; "7. Then 8" and none wrong
    "minerva_math_tulu": (1 / 2 + 1) / 2,  # macro: algebra 2/4 = 1/2 yes, 4 != 3; geometry $10$ yes
    "ifeval_tulu": 2 / 3,  # loose: i2 passes without its first line; i3 is not lower case
    "bbh_cot_tulu": 2 / 3,  # micro over all rows
    "drop_tulu": (1.0 + 0.67) / 2,  # F1: first line "7" exact; "Smith" vs "John Smith" 0.67
    "popqa_tulu": 1 / 2,  # "paris" is the lower-cased gold
    "truthfulqa_mc2_tulu": (0.75 + 0.2) / 2,  # the true answers' share of the probability mass
    "mmlu_mc_tulu": (1 / 2 + 1) / 2,  # macro: anatomy 1/2, virology 1/1
    "mmlu_cot_tulu": (1 / 2 + 1) / 2,  # the last stated letter: C right, B (last) wrong, B right
    "humaneval_tulu": 1 - math.comb(15, 10) / math.comb(20, 10),  # pass@10 with 5 of 20 passing
    "humanevalplus_tulu": 1 - math.comb(15, 10) / math.comb(20, 10),
    "mmlu_pro_tulu": (1 + 0) / 2,  # (K) is no choice
    "gpqa_tulu": 1 / 2,
    "agieval_en_tulu": (1 + 0) / 2,
    "deepmind_math_tulu": (1 + 0) / 2,  # macro: arithmetic 2/2 (1/3 equivalent), algebra 0/1
    "bigcodebench_hard_tulu": 1 / 2,  # the fenced code with the task's TestCases: x + 1 passes, x - 1 fails
    "demo_tulu": (1 + 1 / 2) / 2,  # macro over the rows' datasets: gsm8k 1/1, ifeval 1/2
}


@pytest.fixture(scope="module")
def scored(data):
    names = sorted(p.stem for p in TASKS_DIR.glob("*_tulu.yaml"))
    assert set(names) == set(EXPECTED), "every task file has a scripted expectation"
    cfgs = task_configs(names, [])
    lm = ScriptedLM(RESPONSES, LLS)
    runs = run_tasks(lm, Settings(tasks=names, data=str(data)), cfgs)
    results = {t: r for run in runs for t, r in run["results"].items()}
    samples = {t: s for run in runs for t, s in run["samples"].items()}
    return cfgs, results, samples


def test_every_task_scores_a_scripted_model_exactly(scored):
    cfgs, results, _ = scored
    for task, want in EXPECTED.items():
        primary = cfgs[task]["metadata"]["primary"]
        got = results[task][f"{primary},none"]
        assert got == pytest.approx(want, abs=1e-9), (task, got, want)
    assert results["humaneval_tulu"]["pass@1,none"] == pytest.approx(5 / 20)
    assert results["ifeval_tulu"]["prompt_level_strict_acc,none"] == pytest.approx(1 / 3)
    assert results["drop_tulu"]["em,none"] == pytest.approx(1 / 2)


def test_prompts_are_tulu_chat_turns_with_the_right_shots_and_no_bos(scored):
    _, _, samples = scored
    gsm = samples["gsm8k_tulu"][0]["arguments"][0][0]
    assert gsm.startswith("<|user|>\nQuestion: There are 15 trees") and "<|begin_of_text|>" not in gsm
    assert gsm.count("<|user|>\n") == 9 and gsm.count("<|end_of_text|>\n") == 8
    assert gsm.endswith("Question: [g1] apples?\nAnswer:\n<|assistant|>\n")
    # MMLU: five shots of the evaluated row's own subject
    mc = [s for s in samples["mmlu_mc_tulu"] if "[u3]" in s["doc"]["question"]][0]["arguments"][0][0]
    assert mc.count("<|user|>\n") == 6 and mc.count("[dev-virology-") == 5 and "[dev-anatomy-" not in mc
    # BBH: the task's description (system turn) and its own three exemplars
    wol = [s for s in samples["bbh_cot_tulu"] if s["doc"]["subject"] == "web_of_lies"][0]
    text = wol["arguments"][0][0]
    assert text.startswith("<|system|>\nEvaluate a random boolean function") and text.count("<|user|>\n") == 4
    # DROP is not chat: plain text, three shots
    drop = samples["drop_tulu"][0]["arguments"][0][0]
    assert "<|user|>" not in drop and drop.count("Passage: ") == 4 and drop.endswith("Question: How many?\nAnswer:")
    # HumanEval: the answer begins with the function's own code
    he = samples["humaneval_tulu"][0]["arguments"][0][0]
    assert he.endswith("<|assistant|>\nHere is the completed function:\n\n```python\ndef add(a, b):\n"
                       "    \"\"\"[h1] a + b\"\"\"\n\n")


def test_extraction_and_metrics_directly():
    assert scoring.last_number("It costs $1,234.") == "1234" and scoring.last_number("none") is None
    assert scoring.letter("the answer is (C), not the answer is: D") == "D"
    assert scoring.letter("the answer is: Apple") is None
    assert scoring.bbh_answer("So the answer is (A). Done") == "(A)"
    assert scoring.pass_at_k(20, 0, 10) == 0.0 and scoring.pass_at_k(20, 11, 10) == 1.0
    assert scoring.pass_at_k(2, 1, 1) == pytest.approx(0.5)
    assert scoring.macro_mean([("a", 1), ("a", 0), ("b", 1)]) == pytest.approx(0.75)
    assert scoring.fenced_code("x\n```python\nA\n```\n```python\nB\n```") == "A\n"
    assert scoring.fenced_code("```\nC") == "C" and scoring.fenced_code("plain") == "plain"


def test_sandbox_bounds_generated_code():
    from tulu_mcore.evaluation.sandbox import passes

    assert passes("assert 1 + 1 == 2")
    assert not passes("raise SystemExit(3)")
    assert not passes("while True: pass", timeout_s=1.0)
    # what a model may emit and an argument cannot hold: a NUL (Python refuses the program), a lone
    # surrogate (written as "?")
    assert not passes("x = 1\x00") and passes("assert len('\udc80') == 1")
    assert not passes("import os; os.environ['HOME']")  # an empty environment: no HOME


def test_presets_name_every_task_and_every_benchmark_not_run():
    dev, dev_skip = presets.expand("tulu3_dev")
    assert dev == ["mmlu_cot_tulu", "mmlu_mc_tulu", "popqa_tulu", "truthfulqa_mc2_tulu", "bbh_cot_tulu", "drop_tulu",
                   "minerva_math_tulu", "gsm8k_tulu", "humaneval_tulu", "humanevalplus_tulu", "ifeval_tulu"]
    assert set(dev_skip) == {"alpaca_eval_v2", "safety"}
    unseen, unseen_skip = presets.expand("tulu3_unseen")
    assert unseen == ["mmlu_pro_tulu", "gpqa_tulu", "agieval_en_tulu", "deepmind_math_tulu", "bigcodebench_hard_tulu"]
    assert set(unseen_skip) == {"ifeval_ood", "href"}
    both, _ = presets.expand("tulu3_dev,gsm8k_tulu,tulu3_unseen")
    assert both == dev + unseen  # no task twice
    cfgs = task_configs(dev + unseen, [])  # every name has a task file with its OLMES id
    assert all(cfgs[t]["metadata"]["olmes_id"] for t in dev + unseen)
    for size, ref in presets.REFERENCE.items():
        assert set(ref) <= set(dev), size


def test_cli_errors_are_one_line(tmp_path, capsys):
    from tulu_mcore.cli.eval import main

    def error(*argv):
        with pytest.raises(SystemExit) as e:
            main(list(argv))
        assert e.value.code == 2
        return capsys.readouterr().err

    assert "unknown task(s): nope_tulu" in error(str(tmp_path), "tasks=nope_tulu")
    assert "unknown key 'limt'" in error(str(tmp_path), "limt=3")
    assert "limit=x: an integer is expected" in error(str(tmp_path), "limit=x")
    assert "backend=server needs url=" in error(str(tmp_path), "backend=server")
    assert "no such file or directory" in error(str(tmp_path / "missing"), "tasks=gsm8k_tulu")
    assert "neither a Hugging Face directory" in error(str(tmp_path), "tasks=gsm8k_tulu")
    assert "two or more result directories" in error("compare", str(tmp_path))
    err = error(str(tmp_path), "tasks=gsm8k_tulu", "out=" + str(tmp_path / "o"))
    assert err.count("\n") == 1


def test_missing_local_data_names_the_file(tmp_path):
    from tulu_mcore.errors import UserError
    from tulu_mcore.evaluation.benchmarks import load

    with pytest.raises(UserError, match=r"gsm8k/test.jsonl does not exist"):
        load("gsm8k", data_dir=str(tmp_path))
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "test.jsonl").write_text('{"question": "q"}\n')
    with pytest.raises(UserError, match=r"test.jsonl:1: a gsm8k row needs the field\(s\) answer"):
        load("gsm8k", data_dir=str(tmp_path))


def test_hub_rows_become_the_local_schema():
    from tulu_mcore.evaluation.benchmarks import _agieval_row, _gpqa_row

    row = {"Question": "Q?", "Correct Answer": "right", "Incorrect Answer 1": "w1", "Incorrect Answer 2": "w2",
           "Incorrect Answer 3": "w3"}
    rows = [_gpqa_row(i, row) for i in range(8)]
    assert all(r["choices"][r["answer"]] == "right" and sorted(r["choices"]) == ["right", "w1", "w2", "w3"]
               for r in rows)
    assert len({r["answer"] for r in rows}) > 1  # shuffled, per row
    assert _gpqa_row(3, row) == _gpqa_row(3, row)  # with a fixed seed
    a = _agieval_row("sat-math", {"query": "Q: What is 1+1? Answer Choices: (A)1 (B)2 A: Among A through B, the answer is",
                                  "choices": ["(A)1", "(B)2"], "gold": [1]})
    assert a == {"question": "What is 1+1?", "choices": ["1", "2"], "answer": 1, "subject": "sat-math"}


def test_results_table_puts_the_model_card_beside_a_tulu_size():
    from tulu_mcore.evaluation import report

    rec = {"model": "m", "commit": "c", "lm_eval_version": "0.4.13", "size": "8B",
           "settings": {"backend": "hf", "limit": None},
           "scores": {"gsm8k_tulu": {"metric": "exact_match", "value": 0.8, "n": 1319, "olmes_id": "gsm8k::tulu"},
                      "mmlu_mc_tulu": {"metric": "acc", "value": 0.6, "n": 14042, "olmes_id": "mmlu:mc::tulu"}},
           "not_run": {"safety": "a classifier"}}
    text = report.table(rec)
    assert "| task | setting (OLMES) | metric | score | n | Tülu 3 8B SFT | Tülu 3 8B DPO | Tülu 3 8B |" in text
    assert "| gsm8k_tulu | gsm8k::tulu | exact_match | 80.0 | 1319 | 76.2 | 84.3 | 87.6 |" in text
    assert "| mmlu_mc_tulu | mmlu:mc::tulu | acc | 60.0 | 14042 | — | — | — |" in text
    assert "Average (equal weight, 2 tasks): 70.0" in text and "- safety: a classifier" in text
    assert presets.size_of({"hidden_size": 8192, "num_hidden_layers": 80}) == "70B"


def test_vllm_backend_starts_a_server_on_the_export_and_stops_it(sft_hf, tmp_path, monkeypatch):
    """backend=vllm with a stand-in for vLLM's server: started with the export and vLLM's arguments from
    TULU_VLLM_PYTHON's environment, sent the prompts as token ids rendered here with the export's chat
    template (no BOS), stopped afterwards."""
    import shutil
    import sys
    from pathlib import Path

    from transformers import AutoTokenizer

    from tulu_mcore.evaluation.harness import evaluate

    hf = tmp_path / "hf"
    shutil.copytree(sft_hf, hf)
    cfg = json.loads((hf / "tokenizer_config.json").read_text())
    (hf / "tokenizer_config.json").write_text(json.dumps({**cfg, "chat_template": CHAT_TEMPLATE}))
    worker = Path(__file__).parents[1] / "workers" / "fake_openai_server.py"
    fake = tmp_path / "bin" / "python"
    fake.parent.mkdir()
    fake.write_text(f"#!/bin/sh\nexec {sys.executable} {worker} \"$@\"\n")
    fake.chmod(0o755)
    log = tmp_path / "requests.jsonl"
    monkeypatch.setenv("TULU_VLLM_PYTHON", str(fake))
    monkeypatch.setenv("TULU_FAKE_SERVER_LOG", str(log))
    data = tmp_path / "data"
    write(data, "demo", [
        {"messages": [{"role": "user", "content": "Mia has 5 and gets 7 more."}], "ground_truth": "12", "dataset": "gsm8k"},
        {"messages": [{"role": "user", "content": "Mia has 5 and gets 8 more."}], "ground_truth": "13", "dataset": "gsm8k"},
        {"messages": [{"role": "user", "content": "Name a river. End with 'Bye.'"}],
         "ground_truth": json.dumps({"func_name": "validate_end", "end_phrase": "Bye."}), "dataset": "ifeval"}])
    rec = evaluate(str(hf), Settings(tasks=["demo_tulu"], backend="vllm", data=str(data), max_length=256),
                   tmp_path / "out")
    assert rec["scores"]["demo_tulu"]["value"] == pytest.approx((1 / 2 + 0) / 2)  # every answer is "12"
    bodies = [json.loads(line) for line in log.read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(hf)
    want = tok.apply_chat_template([{"role": "user", "content": "Mia has 5 and gets 7 more."}], tokenize=False,
                                   add_generation_prompt=True)
    sent = [tok.decode(p) for b in bodies for p in (b["prompt"] if isinstance(b["prompt"][0], list) else [b["prompt"]])]
    assert want in sent and not any(s.startswith("<|begin_of_text|>") for s in sent)
    assert all(b["max_tokens"] == 32 and b["temperature"] == 0 and b["seed"] == 1234 for b in bodies)
    assert (tmp_path / "out" / "vllm.log").is_file()
    from tulu_mcore.evaluation.serve import models

    with pytest.raises(OSError):  # the server was stopped: its port no longer answers
        models(rec["settings"]["url"], timeout=2)
