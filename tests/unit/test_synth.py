"""tulu-synth's pieces without a model: a scripted judge through the rating and binarization code
(expected pairs written out), the judge parsers against the released parser's rules, the UltraFeedback
prompts, constraints, filters, shards, configs, and the rlvr verb end to end."""

import json
import math
import random
from types import SimpleNamespace

import numpy as np
import pytest

from tulu_mcore.errors import ConfigError, UserError
from tulu_mcore.rewards import ifeval
from tulu_mcore.synth import binarize as bz
from tulu_mcore.synth import constraints as cons
from tulu_mcore.synth import filters, judge
from tulu_mcore.synth.config import compose
from tulu_mcore.synth.engines import Completion
from tulu_mcore.synth.preferences import pair_of, rate_rows
from tulu_mcore.synth.shards import Stage


class ScriptedJudge:
    """A judge whose reply to each request is scripted: reply(aspect, instruction, text, attempt) -> str.
    Records every request."""

    def __init__(self, reply):
        self.reply, self.calls, self.attempt = reply, [], -1
        self.seeds = []

    def chat(self, convs, *, n, max_new_tokens, temperature, seed):
        if seed not in self.seeds:
            self.seeds.append(seed)
        attempt = self.seeds.index(seed)
        out = []
        for conv in convs:
            text = conv[-1]["content"]
            aspect = next(a for a in judge.ASPECTS if judge.single_prompt(a, "", "").split(":")[0] in text
                          and text.startswith(judge.single_prompt(a, "", "").split("\n")[0]))
            instruction = text.split("\nInstruction: ", 1)[1].split("\nResponse: ", 1)[0]
            response = text.split("\nResponse: ", 1)[1]
            self.calls.append((aspect, instruction, response, attempt))
            out.append([Completion(self.reply(aspect, instruction, response, attempt), True, 3)])
        return out


class Timer:
    def chat(self, gen, convs, **kw):
        return gen.chat(convs, **kw)


def cfg_for(**kw):
    judge_cfg = SimpleNamespace(template="single", aspects=list(judge.ASPECTS), temperature=0.1, max_new_tokens=8,
                                retries=2)
    base = dict(judge=judge_cfg, tulu3_compat=False, drop_truncated=True, pairs="judge", seed=7)
    base.update(kw)
    return SimpleNamespace(**base)


# per prompt: completions (model, text, finished) and the rating each text gets on every aspect
PROMPTS = {
    "tie": [("policy", "A1", True), ("policy", "A2", True), ("pool", "A3", True)],  # A1 = A2 = 5, A3 = 2
    "equal": [("policy", "B1", True), ("pool", "B2", True)],  # both 3
    "single": [("policy", "C1", True), ("pool", "C2", False)],  # C2 cut at the limit: not judged
    "malformed": [("policy", "D1", True), ("pool", "D2", True)],  # D2's honesty reply never parses
    "retried": [("policy", "E1", True), ("pool", "E2", True)],  # E1's helpfulness parses on the 2nd try
    "na": [("policy", "F1", True), ("pool", "F2", True)],  # F1: 4,4,N/A,4 -> 4; F2: 1 everywhere
}
RATING = {"A1": 5, "A2": 5, "A3": 2, "B1": 3, "B2": 3, "C1": 4, "D1": 5, "D2": 1, "E1": 4, "E2": 2, "F1": 4, "F2": 1}


def scripted(aspect, instruction, text, attempt):
    if text == "D2" and aspect == "honesty":
        return "I think it is quite good."  # no rating line, every time
    if text == "E1" and aspect == "helpfulness" and attempt == 0:
        return "Rating: 7"  # out of range: asked again
    if text == "F1" and aspect == "honesty":
        return "Rating: N/A"
    return f"Rating: {RATING[text]}"


def rows_and_completions():
    prompts, comps = [], {"policy": {}, "pool": {}}
    for pid, items in PROMPTS.items():
        prompts.append({"id": pid, "messages": [{"role": "user", "content": f"question {pid}"}], "ground_truth": None,
                        "dataset": None})
        for m in comps:
            comps[m][pid] = {"outputs": [{"text": t, "finished": f} for mm, t, f in items if mm == m]}
    return prompts, comps


def test_scripted_judge_binarizes_to_the_expected_pairs():
    cfg = cfg_for()
    prompts, comps = rows_and_completions()
    j = ScriptedJudge(scripted)
    rows, stats = rate_rows(cfg, j, prompts, comps, ["policy", "pool"], seed=11, timer=Timer())
    by = {r["id"]: r for r in rows}
    assert by["single"]["dropped"] == "fewer_than_two_completions" and stats["truncated_completions"] == 1
    assert by["malformed"]["dropped"] == "judge_failed"
    # D2/honesty asked 3 times (1 + judge.retries); E1/helpfulness twice
    assert sum(1 for c in j.calls if c[2] == "D2" and c[0] == "honesty") == 3
    assert sum(1 for c in j.calls if c[2] == "E1" and c[0] == "helpfulness") == 2
    assert stats["malformed"] == 4 and stats["recovered_by_retry"] == 1 and stats["failed_after_retries"] == 1
    # 5 judged prompts x their texts x 4 aspects, then the 3 + 1 asked again
    assert stats["requests"] == (3 + 2 + 2 + 2 + 2) * 4 + 2 + 1
    na_order = [c["text"] for c in by["na"]["completions"]]
    assert by["na"]["ratings"]["honesty"] == [None if t == "F1" else 1.0 for t in na_order]
    results = {r["id"]: pair_of(cfg, r) for r in rows if not r["dropped"]}
    assert {k: why for k, (_, why) in results.items()} == {"tie": "pair", "equal": "all_equal", "retried": "pair",
                                                           "na": "pair"}
    tie = results["tie"][0]
    # the judge saw the completions in a seeded random order: each rating stays with its text
    order = [c["text"] for c in by["tie"]["completions"]]
    assert sorted(order) == ["A1", "A2", "A3"] and tie["ratings"] == [float(RATING[t]) for t in order]
    assert tie["models"] == ["pool" if t == "A3" else "policy" for t in order]
    # chosen: the first of the two 5s in that order; rejected: the only strictly lower one (never the tie)
    first5 = next(t for t in order if RATING[t] == 5)
    assert tie["chosen"][-1]["content"] == first5 and tie["rejected"][-1]["content"] == "A3"
    assert (tie["chosen_rating"], tie["rejected_rating"]) == (5.0, 2.0)
    assert (tie["chosen_model"], tie["rejected_model"]) == ("policy", "pool")
    # the order is a function of the seed and the prompt: the same on a rerun
    again, _ = rate_rows(cfg, ScriptedJudge(scripted), *rows_and_completions(), ["policy", "pool"], seed=11,
                         timer=Timer())
    assert [c["text"] for c in again[0]["completions"]] == order
    assert tie["chosen"][0] == {"role": "user", "content": "question tie"} and tie["prompt"] == "question tie"
    retried = results["retried"][0]
    assert (retried["chosen"][-1]["content"], retried["rejected"][-1]["content"]) == ("E1", "E2")
    na = results["na"][0]
    assert (na["chosen_rating"], na["rejected_rating"]) == (4.0, 1.0)  # N/A left out of F1's mean


def test_a_judge_prompt_too_long_is_dropped_not_retried():
    class TooLong(ScriptedJudge):
        def chat(self, convs, **kw):
            out = super().chat(convs, **kw)
            return [None if "B1" in c[-1]["content"] else o for c, o in zip(convs, out)]

    prompts, comps = rows_and_completions()
    j = TooLong(scripted)
    rows, stats = rate_rows(cfg_for(), j, prompts, comps, ["policy", "pool"], seed=11, timer=Timer())
    by = {r["id"]: r for r in rows}
    assert by["equal"]["dropped"] == "judge_prompt_too_long" and stats["judge_prompt_too_long"] == 1
    assert by["malformed"]["dropped"] == "judge_failed"  # the other drops as before
    assert not any(c[2] == "B1" and c[3] > 0 for c in j.calls)  # never asked again


def test_tulu3_compat_reproduces_the_released_binarization():
    """scripts/synth_pref: a reply chunk that does not match is rated 1, "N/A" -1, nanmean over aspects
    (jagged lists padded with NaN), the first four means, argmax, rejected uniform over the other
    positions (ties included), one rating -> rejected = chosen."""
    # the released rules, written out: honesty chunks
    assert judge.parse_tulu3("Rating: 4\nRationale: ok", "honesty") == [4]
    assert judge.parse_tulu3("Rating: N/A\nRationale: creative", "honesty") == [-1]
    assert judge.parse_tulu3("Sure!\n\nRating: 3\nRationale: fine", "honesty") == [1, 3]  # a preamble shifts
    assert judge.parse_tulu3("Rating: five\nRationale: x", "instruction_following") == [1]
    assert judge.parse_tulu3("Type: None\nRationale: a\nRating: 2\nRationale: b", "truthfulness") == [2]
    assert judge.parse_tulu3("Rating: 2\nRationale: b", "helpfulness") == [1]  # no Type line: no match
    ratings = {"helpfulness": [5, 3], "instruction_following": [4, 3], "honesty": [-1, 3], "truthfulness": [5, 3, 1]}
    means = bz.mean_ratings_tulu3(ratings)
    assert means[:2] == [pytest.approx(13 / 4), 3.0] and means[2] == 1.0
    # three means for two completions: a rejected drawn at position 2 names no completion -> dropped
    seen = {bz.binarize_tulu3(means, 2, random.Random(s)) for s in range(40)}
    assert seen == {(0, 1), "out_of_range"}
    # ties: argmax picks the first; the rejected may tie it
    seen = {bz.binarize_tulu3([4.0, 4.0, 2.0], 3, random.Random(s)) for s in range(40)}
    assert seen == {(0, 1), (0, 2)}
    assert bz.binarize_tulu3([3.0], 1, random.Random(0)) == (0, 0)  # degenerate, as released
    assert bz.binarize_tulu3([float("nan"), 2.0], 2, random.Random(0))[0] == 0  # numpy's argmax takes NaN
    assert int(np.argmax([float("nan"), 2.0])) == 0


def test_default_binarization_rules():
    rng = random.Random(0)
    assert bz.binarize([3.0], rng) == "single"
    assert bz.binarize([3.0, float("nan")], rng) == "single"
    assert bz.binarize([3.0, 3.0, 3.0], rng) == "all_equal"
    assert bz.binarize([2.0, 4.0, 4.0, 1.0], rng, ["a", "b", "c", "b"]) == (1, 0)  # "b" again is no rejected
    assert bz.binarize([2.0, 4.0, 2.0], rng, ["b", "b", "b"]) == "identical"
    assert {bz.binarize([1.0, 5.0, 3.0], random.Random(s)) for s in range(30)} == {(1, 0), (1, 2)}
    assert bz.mean_ratings({"a": [4.0, 1.0], "b": [float("nan"), 3.0]}) == [4.0, 2.0]


@pytest.mark.parametrize("text,aspect,n,want", [
    ("#### Output for Text 1\nRating: 4\nRationale: fine\n\n#### Output for Text 2\nRating: 2\nRationale: x",
     "instruction_following", 2, [4.0, 2.0]),
    ("Here are my ratings.\n\n#### Output for Text 1\nRating: 5\nRationale: a\n\n#### Output for Text 2\n"
     "Rating: N/A\nRationale: creative", "honesty", 2, [5.0, "nan"]),
    ("#### Output for Text 1\nType: 1, 2\nRationale: r\nRating: 3 (partial)\nRationale: x", "truthfulness", 1, [3.0]),
    ("#### Output for Text 2\nRating: 4\nRationale: a\n\n#### Output for Text 3\nRating: 1\nRationale: b",
     "instruction_following", 2, [4.0, 1.0]),  # the released template numbers the texts from 2
    ("Rating: 4", "helpfulness", 1, [4.0]),
    ("#### Output for Text 1\nRating: 4\nRationale: a", "helpfulness", 2, None),  # text 2 unrated
    ("#### Output for Text 1\nRating: 6\nRationale: a", "helpfulness", 1, None),  # out of range
    ("Rating: N/A", "helpfulness", 1, None),  # N/A is honesty's only
    ("Rating: 4\nRating: 2", "helpfulness", 1, None),  # two ratings for one text
    ("I would say 4.", "helpfulness", 1, None),
])
def test_strict_parser(text, aspect, n, want):
    got = judge.parse(text, aspect, n)
    if want is None:
        assert got is None
    else:
        assert [("nan" if math.isnan(v) else v) for v in got] == want


def test_ultrafeedback_requests_are_tulu3s_prompts():
    (conv,) = judge.requests("ultrafeedback", "instruction_following", "Say hi.", ["hi", "hello"])
    assert conv[0] == {"role": "system", "content": judge.SYSTEM}
    user = conv[1]["content"]
    assert user.startswith("# Instruction Following Assessment\n") and user.endswith("### Output")  # jinja2 drops the last newline
    assert "\n<text 2> hi\n\n<text 3> hello\n" in user  # numbered from 2, as released
    assert "#### Output for Text 2\nRating: [Rating for text 2]\nRationale:" in user
    hon = judge.requests("ultrafeedback", "honesty", "Say hi.", ["hi", "hello"])[0][1]["content"]
    assert "\n<text 1> hi\n\n<text 2> hello\n" in hon and 'Rate outputs 1 to 5 (or "N/A")' in hon
    tru = judge.requests("ultrafeedback", "truthfulness", "Q", ["a"])[0][1]["content"]
    assert "Type: [List of numeric identifiers" in tru and tru.count("#### Output for Text") == 1
    singles = judge.requests("single", "honesty", "Q", ["a", "b"])
    assert [c[0]["content"] for c in singles] == [judge.single_prompt("honesty", "Q", x) for x in "ab"]


def test_builtin_judge_lessons_use_the_single_template_verbatim():
    from tulu_mcore.data.sources import BUILTIN

    rows = [json.loads(line) for line in BUILTIN["builtin:judge-demo"].read_text().splitlines()]
    assert len(rows) == 64
    for r in rows:
        assert r["messages"][0]["content"] == judge.single_prompt(r["aspect"], r["instruction"], r["response"])
        assert judge.parse(r["messages"][1]["content"], r["aspect"], 1) is not None


def test_every_constraint_category_draws_a_checkable_ground_truth():
    rng = random.Random(3)
    assert len(cons.CATEGORIES) == 25
    for category in cons.CATEGORIES:
        c = cons.draw(category, rng, prompt="Describe a bridge.")
        gt = json.loads(c.ground_truth())
        assert list(gt) == ["func_name", *cons.ARGUMENTS]  # Tülu 3's flat format, unused arguments null
        assert gt["func_name"] in ifeval.FUNCTIONS and c.instruction
        ifeval.verify("A bridge. P.S. it is long.", c.ground_truth())  # the verifier takes its arguments
    # constraints a response can satisfy, checked by the verifier on a response built to satisfy them
    c = cons.draw("punctuation:no comma", rng)
    assert ifeval.verify("no commas here", c.ground_truth()) and not ifeval.verify("a, b", c.ground_truth())
    c = cons.draw("startend:end checker", rng)
    assert ifeval.verify("Sure. " + c.args["end_phrase"], c.ground_truth())
    for seed in range(300):
        drawn = cons.sample(random.Random(seed), 3)
        cats = {x.category for x in drawn}
        assert len(cats) == 3
        for pair in ({"change case:english capital", "change case:english lowercase"},
                     {"startend:quotation", "startend:end checker"},
                     {"change case:english lowercase", "detectable content:postscript"}):
            assert not pair <= cats
        forbidden = [x for x in drawn if x.func_name == "validate_forbidden_words"]
        asked = {w for x in drawn for w in x.args.get("keyword_list", []) + [x.args.get("word")] if w}
        assert not forbidden or not set(forbidden[0].args["forbidden_words"]) & asked


def test_filters():
    assert filters.majority(["42", "42", " 42.", "7"], 0.5) == "42"
    # answers keep their own form: a tuple's comma stays, thousands separators compare equal
    assert filters.majority(["(3, 4)", "(3,4)", "(3, 4)"], 0.5) == "(3, 4)"
    assert filters.majority(["1,000", "1000", "7"], 0.5) == "1,000"
    from tulu_mcore.synth.templates import answer_of

    assert answer_of("grade_math", "3 + 15 = 18\n#### 18 dollars") == "18"
    assert answer_of("grade_math", "#### $1,250.") == "1250"
    assert answer_of("math", "Final Answer: The final answer is $\\frac{1}{2}$. I hope it is correct.") == "\\frac{1}{2}"
    assert filters.majority(["42", "42", "7", None], 0.5) is None  # 2 of 4 is no majority
    assert filters.majority([None, None], 0.5) is None
    texts = ["Tom has five apples and buys three more at the store today. How many apples does he have?",
             "tom has five apples and buys three more at the store today how many apples does he have",
             "Tom has five apples and buys three more at the store today. How many apples does he have now?",
             "Write a python function to reverse a list."]
    assert filters.duplicates(texts) == [None, "duplicate", "near_duplicate", None]
    assert filters.duplicates(texts, near=1.0) == [None, "duplicate", None, None]
    assert filters.has_keyword("As an OpenAI model", ["openai"]) == "openai"


def test_shards_resume_refuse_other_settings_and_split_over_tasks(tmp_path):
    made = []

    def make(span, k):
        made.append(k)
        return [{"i": i} for i in span]

    st = Stage(tmp_path, "s", 10, 3, {"a": 1}, log=lambda m: None)
    st.run(make)
    assert made == [0, 1, 2, 3] and [r["i"] for r in st.rows()] == list(range(10))
    (tmp_path / "s" / "shard-00002.jsonl").unlink()  # a shard lost in flight
    Stage(tmp_path, "s", 10, 3, {"a": 1}, log=lambda m: None).run(make)
    assert made == [0, 1, 2, 3, 2]
    with pytest.raises(UserError, match="other settings .*a"):
        Stage(tmp_path, "s", 10, 3, {"a": 2})
    t0 = Stage(tmp_path, "t", 10, 2, {}, task=0, tasks=2, log=lambda m: None)
    t1 = Stage(tmp_path, "t", 10, 2, {}, task=1, tasks=2, log=lambda m: None)
    assert t0.pending() == [0, 2, 4] and t1.pending() == [1, 3]
    t0.run(make)
    assert not t0.complete()
    with pytest.raises(UserError, match=r"shards \[1, 3\] still missing"):
        t0.wait(0.1, poll_s=0.05)
    t1.run(make)
    t0.wait(1)
    assert [r["i"] for r in t0.rows()] == list(range(10))


def test_configs_name_the_mistake(tmp_path):
    with pytest.raises(ConfigError, match=r"set model=\.\.\., out=\.\.\., personas=\.\.\."):
        compose("personas", [])
    with pytest.raises(ConfigError, match="judge.template='x'"):
        compose("preferences", ["out=o", "prompts=[p.jsonl]", "policy=m", "judge.model=j", "judge.template=x"])
    with pytest.raises(ConfigError, match="judge.template=ultrafeedback"):
        compose("preferences", ["out=o", "prompts=[p.jsonl]", "pool=[a,b]", "judge.model=j", "judge.template=single",
                                "tulu3_compat=true"])
    with pytest.raises(ConfigError, match="completions_per_model=2"):
        compose("preferences", ["out=o", "prompts=[p.jsonl]", "policy=m", "judge.model=j"])
    with pytest.raises(UserError, match="nosuchkey"):
        compose("rlvr", ["out=o", "source=[a]", "nosuchkey=1"])
    cfg = compose("preferences", ["out=o", "prompts=[p.jsonl]", "pool=[a,b]", "pairs=if_verified"])
    assert cfg.pool == ["a", "b"] and cfg.judge.template == "ultrafeedback" and cfg.judge.temperature == 0.1
    (tmp_path / "rlvr.yaml").write_text("out: mine\nsource: [x.jsonl]\nkind: math\n")
    assert compose("rlvr", [], str(tmp_path)).kind == "math"


def test_preference_loader_takes_tulu3_rows_with_a_prompt_beside_whole_conversations(tmp_path):
    from tulu_mcore.data.preference import load_pairs
    from tulu_mcore.data.sources import source_specs

    row = {"prompt": "Q?", "chosen": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "A"}],
           "rejected": [{"role": "user", "content": "Q?"}, {"role": "assistant", "content": "B"}],
           "chosen_rating": 4.5, "rejected_rating": 2.0}
    p = tmp_path / "p.jsonl"
    p.write_text(json.dumps(row) + "\n" + json.dumps({"prompt": "Q?", "chosen": "A", "rejected": "B"}) + "\n")
    pairs = load_pairs(source_specs(str(p)), on_error="strict", seed=0).pairs
    assert pairs[0] == pairs[1] == (row["chosen"], row["rejected"])


def test_rlvr_verb_writes_verifiable_decontaminated_rows(tmp_path, capsys):
    from tulu_mcore.cli.synth import main
    from tulu_mcore.data.rlvr import load_prompts
    from tulu_mcore.data.sources import source_specs
    from tulu_mcore.rewards import check

    gsm = tmp_path / "gsm.jsonl"
    qs = ["Mia has 0 apples and buys 3 more at the market on a sunny day. How many apples now?",
          "A train leaves at 1 and arrives 4 hours later; when does it arrive?", "What is 2 plus 5 in total?",
          "Ravi reads 3 pages each day for 6 days straight. How many pages?", "Add 4 and 7 please.",
          "Sara owns 5 cats and adopts 8 more from the shelter downtown. Count them."]
    gsm.write_text("".join(json.dumps({"question": q, "answer": f"{i} + {i + 3} = {2 * i + 3}\n#### {2 * i + 3}"})
                           + "\n" for i, q in enumerate(qs)))
    evals = tmp_path / "eval.jsonl"  # one training question is also an eval question
    evals.write_text(json.dumps({"question": qs[0]}) + "\n")
    shots = tmp_path / "shots.jsonl"
    shots.write_text(json.dumps({"question": "1 + 1?", "answer": "1 + 1 = 2. The answer is 2."}) + "\n")
    main(["rlvr", "kind=gsm8k", f"source=[{gsm}]", f"out={tmp_path / 'g'}", f"decontam.eval=[{evals}]",
          f"fewshot={shots}", "shard_size=4"])
    rep = json.loads((tmp_path / "g" / "report.json").read_text())
    assert rep["rows"] == 6 and rep["decontamination"]["rlvr"]["removed"] == 1 and rep["outputs"]["rlvr"]["rows"] == 5
    rows = [json.loads(line) for line in (tmp_path / "g" / "rlvr.jsonl").read_text().splitlines()]
    assert rows[0]["messages"][0]["content"] == f"Question: 1 + 1?\nAnswer: 1 + 1 = 2. The answer is 2.\n\nQuestion: {qs[1]}\nAnswer:"
    assert rows[0]["ground_truth"] == "5" and rows[0]["dataset"] == "gsm8k"
    assert check("gsm8k", "so the answer is 5", rows[0]["ground_truth"]).verified

    math_rows = tmp_path / "math.jsonl"
    math_rows.write_text(json.dumps({"problem": "Simplify 2/4.", "solution": "It is $\\boxed{\\frac{1}{2}}$."}) + "\n")
    main(["rlvr", "kind=math", f"source=[{math_rows}]", f"out={tmp_path / 'm'}", "decontam.enabled=false"])
    (m,) = [json.loads(line) for line in (tmp_path / "m" / "rlvr.jsonl").read_text().splitlines()]
    assert m["ground_truth"] == "\\frac{1}{2}" and m["dataset"] == "MATH"

    prompts = tmp_path / "if.jsonl"
    prompts.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Describe item {i}."}]}) + "\n"
                               for i in range(30)))
    main(["rlvr", "kind=ifeval", f"source=[{prompts}]", f"out={tmp_path / 'i'}", "decontam.enabled=false"])
    out = tmp_path / "i" / "rlvr.jsonl"
    loaded = load_prompts(source_specs(str(out)), on_error="strict", seed=0, unverifiable="bad")
    assert len(loaded.prompts) == 30 and {p.dataset for p in loaded.prompts} == {"ifeval"}
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len({r["constraint_type"] for r in rows}) > 10
    for r in rows:
        assert r["messages"][0]["content"].endswith(r["constraint"])
    rerun = capsys.readouterr().out
    main(["rlvr", "kind=ifeval", f"source=[{prompts}]", f"out={tmp_path / 'i'}", "decontam.enabled=false"])
    assert "all 1 shard(s) of this task done before" in capsys.readouterr().out and rerun
    assert [json.loads(line) for line in out.read_text().splitlines()] == rows


def test_cli_explains_itself_and_names_mistakes(capsys, tmp_path):
    from tulu_mcore.cli.synth import main

    main(["--help"])
    out = capsys.readouterr().out
    assert "Verbs:" in out and all(v in out for v in ("personas", "preferences", "rlvr", "launcher.name=slurm"))
    with pytest.raises(SystemExit) as e:
        main(["persona"])
    assert e.value.code != 0 and "unknown verb 'persona'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["rlvr", "out=o", "source=[a]", "kind=gsm"])
    assert "kind='gsm': gsm8k, math or ifeval" in capsys.readouterr().err
    main(["rlvr", "out=o", "source=[a]", "--print-config"])
    assert "kind: gsm8k" in capsys.readouterr().out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q", "answer": "no hashes"}\n')
    with pytest.raises(SystemExit):
        main(["rlvr", f"out={tmp_path / 'o'}", f"source=[{bad}]"])
    assert f"{bad}:1:" in capsys.readouterr().err
    main(["rlvr", f"out={tmp_path / 'o'}", f"source=[{bad}]", "launcher.name=slurm", "launcher.dry_run=true",
          "launcher.nodes=2", "launcher.ranks_per_node=4", "engine.vllm.tp=2"])
    script = capsys.readouterr().out
    assert "#SBATCH --gpus-per-task=2" in script and "srun --kill-on-bad-exit=0 --nodes=2 --ntasks=8" in script
    job = script.split("srun", 1)[1]
    assert f"out={tmp_path / 'o'}" in job and "launcher.name=local" in job and "launcher.nodes" not in job
