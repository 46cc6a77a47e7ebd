"""Verifiers: tables of GSM8K, MATH and IFEval cases (each expected verdict written here), the released
checkers' quirks under tulu3_compat, timeouts and errors scored 0 and counted, and the reward."""

import json
import time
from fractions import Fraction

import pytest

from tulu_mcore.rewards import Verdict, VerifierStats, check, reward, verify

# ----------------------------------------------------------------------------- GSM8K
NUMBERS = [0, 7, 18, 42, 100, 999, 1000, 1234, 12345, 1234567, -3, -250, -1000, -98765]
DECIMALS = ["0.5", "2.75", "-4.25", "1234.5", "0.125"]


def commas(n: int) -> str:
    return f"{n:,}"


GSM8K = []
for n in NUMBERS:
    for text in (f"So the total is {n}.", f"#### {commas(n)}", f"The answer is {commas(n)} dollars.",
                 f"First 3 + 4 = 7, then we get {commas(n)}"):
        GSM8K.append((text, str(n), True))
        GSM8K.append((text, str(n + 1), False))
for d in DECIMALS:
    GSM8K.append((f"It costs ${d} in the end: {d}", d, True))
    GSM8K.append((f"It costs {d}", str(Fraction(d) + 1), False))
GSM8K += [
    ("18.0 apples", "18", True),  # compared as numbers
    ("no number at all", "5", False),
    ("5 apples, then 6", "5", False),  # the last number counts
    ("1,2,3", "3", True),
    ("+12 points", "12", True),
    # a sign only where no word character or digit precedes it: a hyphen is not a minus sign
    ("pages 3-5", "5", True),
    ("pages 3-5", "-5", False),
    ("20-15=5", "5", True),
    ("20-15", "15", True),
    ("20-15", "-15", False),
    ("on 2024-01-05", "5", True),
    ("1.5-2.5", "2.5", True),
    ("x-3", "3", True),
    ("-7", "-7", True),
    ("-7 is the answer", "7", False),
    ("The answer is -3.", "-3", True),
    ("The answer is -3.", "3", False),
    ("it is (-4)", "-4", True),
    ("total: $-2.5", "-2.5", True),
    ("10 - 3", "3", True),
]


@pytest.mark.parametrize("response,truth,expected", GSM8K)
def test_gsm8k(response, truth, expected):
    assert verify("gsm8k", response, truth) is expected


def test_gsm8k_table_size_and_compat():
    assert len(GSM8K) >= 100
    # the release: sign only on decimals, string equality
    assert verify("GSM8K", "the answer is -5", "-5") and not verify("gsm8k", "the answer is -5", "-5", tulu3_compat=True)
    assert verify("gsm8k", "-5.5 left", "-5.5", tulu3_compat=True)
    assert not verify("gsm8k", "18.0", "18", tulu3_compat=True)
    assert verify("gsm8k", "1,234,567", "1234567", tulu3_compat=True)


# ----------------------------------------------------------------------------- MATH
MATH = []
for p, q in [(1, 2), (3, 4), (2, 3), (5, 8), (7, 3), (1, 6), (9, 10), (11, 4), (-1, 2), (-5, 3)]:
    frac = f"\\frac{{{p}}}{{{q}}}" if p > 0 else f"-\\frac{{{-p}}}{{{q}}}"
    wrong = f"\\frac{{{p + 1}}}{{{q}}}" if p + 1 > 0 else f"-\\frac{{{-(p + 1)}}}{{{q}}}"
    MATH += [
        (f"Thus the answer is $\\boxed{{{frac}}}$.", frac, True),
        (f"Thus the answer is $\\boxed{{{frac.replace('frac', 'dfrac')}}}$.", frac, True),
        (f"Final Answer: The final answer is ${frac}$. I hope it is correct.", frac, True),
        (f"We get $x = {frac}$", frac, True),
        (f"Thus the answer is $\\boxed{{{wrong}}}$.", frac, False),
        (f"Final Answer: The final answer is ${wrong}$. I hope it is correct.", frac, False),
    ]
    if q in (2, 4, 8, 10):  # terminating decimals
        MATH.append((f"\\boxed{{{float(Fraction(p, q))}}}", frac, True))
for k in [2, 3, 5, 7, 8, 12]:
    MATH += [
        (f"\\boxed{{\\sqrt{{{k}}}}}", f"\\sqrt{{{k}}}", True),
        (f"\\boxed{{\\sqrt{k}}}", f"\\sqrt{{{k}}}", k < 10),  # LaTeX: \\sqrt12 is \\sqrt{1}2
        (f"\\boxed{{2\\sqrt{{{k}}}}}", f"\\sqrt{{{4 * k}}}", True),
        (f"\\boxed{{\\sqrt{{{k + 1}}}}}", f"\\sqrt{{{k}}}", False),
    ]
MATH += [
    ("The area is \\boxed{12\\pi}.", "12\\pi", True),
    ("The area is \\boxed{\\pi \\cdot 12}.", "12\\pi", True),
    ("so \\boxed{(2, 3)}", "(2,3)", True),
    ("so \\boxed{(3, 2)}", "(2,3)", False),
    ("\\boxed{x^2+2x+1}", "(x+1)^2", True),
    ("\\boxed{x^2+1}", "(x+1)^2", False),
    ("\\boxed{50\\%}", "50", True),
    ("\\boxed{90^\\circ}", "90", True),
    ("\\boxed{\\text{(C)}}", "\\text{(C)}", True),
    ("the answer is $\\frac{1}{2}$ or maybe $\\frac{1}{3}$", "\\frac{1}{3}", True),  # the last $...$
    ("\\boxed 5", "5", True),
    ("\\boxed{\\boxed{7}}", "7", True),
    ("no answer here", "3", False),
    ("\\boxed{10}", "\\boxed{10}", True),  # a boxed ground truth
    ("\\boxed{1,000}", "1000", True),
    ("\\boxed{0.5}", "\\frac12", True),
    ("\\boxed{2}", "3", False),
    ("\\boxed{-3}", "-3", True),
    ("\\boxed{2^{10}}", "1024", True),
    ("\\boxed{\\infty}", "\\infty", True),
]


@pytest.mark.parametrize("response,truth,expected", MATH)
def test_math(response, truth, expected):
    v = check("MATH", response, truth)
    assert v.status == "ok" and v.verified is expected, v


def test_math_table_size():
    assert len(MATH) >= 100


# ----------------------------------------------------------------------------- IFEval
def gt(func_name, **kw):
    return json.dumps({"func_name": func_name, **kw, "unused_null_argument": None})


IFEVAL = [
    # (response, ground truth, expected)
    ("I love apples and Bananas.", gt("verify_keywords", keyword_list=["apple", "banana"]), True),
    ("I love apples.", gt("verify_keywords", keyword_list=["apple", "banana"]), False),
    ("cat dog cat, CAT!", gt("verify_keyword_frequency", word="cat", N=3), True),
    ("cat dog cats", gt("verify_keyword_frequency", word="cat", N=2), False),
    ("a clean answer", gt("validate_forbidden_words", forbidden_words=["bad", "ugly"]), True),
    ("a Bad answer", gt("validate_forbidden_words", forbidden_words=["bad", "ugly"]), False),
    ("banana", gt("verify_letter_frequency", letter="a", N=3), True),
    ("bAnana", gt("verify_letter_frequency", letter="a", N=3), False),
    ("The weather is lovely today and we are going for a long walk in the park.",
     gt("validate_response_language", language="en"), True),
    ("Das Wetter ist heute sehr schön und wir gehen im Park spazieren.",
     gt("validate_response_language", language="en"), False),
    ("first\n* * *\nsecond\n* * *\nthird", gt("verify_paragraph_count", N=3), True),
    ("first\n* * *\n* * *\nthird", gt("verify_paragraph_count", N=3), False),
    ("one two three four five", gt("validate_word_constraint", N=5, quantifier="at least"), True),
    ("one two three", gt("validate_word_constraint", N=5, quantifier="at least"), False),
    ("one two three", gt("validate_word_constraint", N=5, quantifier="at most"), True),
    ("one two three four five six", gt("validate_word_constraint", N=5, quantifier="at most"), False),
    ("w " * 11, gt("validate_word_constraint", N=10, quantifier="around"), True),
    ("w " * 13, gt("validate_word_constraint", N=10, quantifier="around"), False),
    ("w " * 5, gt("validate_word_constraint", N=5, quantifier="less than"), False),  # not a quantifier it knows
    ("One. Two? Three.", gt("verify_sentence_constraint", N=3, quantifier="at least"), True),
    ("One. Two.", gt("verify_sentence_constraint", N=3, quantifier="at least"), False),
    ("Mr. Smith went home. He slept.", gt("verify_sentence_constraint", N=2, quantifier="at most"), True),
    ("A. B. C. D.", gt("verify_sentence_constraint", N=2, quantifier="at most"), False),
    ("One. Two. Three. Four.", gt("verify_sentence_constraint", N=3, quantifier="around"), True),
    ("One.", gt("verify_sentence_constraint", N=3, quantifier="around"), False),
    ("Intro here\n\nThe second one\n\nend", gt("validate_paragraphs", N=3, first_word="The", i=2), True),
    ("Intro here\n\nA second one\n\nend", gt("validate_paragraphs", N=3, first_word="The", i=2), False),
    ("Intro here\n\nThe second one", gt("validate_paragraphs", N=3, first_word="The", i=2), False),
    ("Body text.\nP.S. see you", gt("verify_postscript", postscript_marker="P.S."), True),
    ("Body text.\nP.S.", gt("verify_postscript", postscript_marker="P.S."), False),
    ("Dear [name], at [address]", gt("validate_placeholders", N=2), True),
    ("Dear [name]", gt("validate_placeholders", N=2), False),
    ("* a\n* b\n- c", gt("verify_bullet_points", N=3), True),
    ("* a\n* b", gt("verify_bullet_points", N=3), False),
    ("<<My Poem>>\nroses", gt("validate_title"), True),
    ("My Poem\nroses", gt("validate_title"), False),
    ("My answer is yes.", gt("validate_choice", options=["yes", "no"]), True),
    ("My answer is maybe.", gt("validate_choice", options=["yes", "no"]), False),
    ("*one* and *two*", gt("validate_highlighted_sections", N=2), True),
    ("*one* only", gt("validate_highlighted_sections", N=2), False),
    ("SECTION 1 a SECTION 2 b", gt("validate_sections", N=2, section_splitter="SECTION"), True),
    ("intro SECTION 1 a SECTION 2 b", gt("validate_sections", N=2, section_splitter="SECTION"), False),
    ('{"a": [1, 2]}', gt("validate_json_format"), True),
    ('```json\n{"a": 1}\n```', gt("validate_json_format"), False),
    ("Write a poem. Roses are red", gt("validate_repeat_prompt", original_prompt="Write a poem."), True),
    ("Roses are red", gt("validate_repeat_prompt", original_prompt="Write a poem."), False),
    ("first answer\n******\nsecond answer", gt("validate_two_responses"), True),
    ("same\n******\nsame", gt("validate_two_responses"), False),
    ("ALL CAPS HERE 123", gt("validate_uppercase"), True),
    ("Not all caps", gt("validate_uppercase"), False),
    ("all lower here", gt("validate_lowercase"), True),
    ("Not all lower", gt("validate_lowercase"), False),
    ("THE BIG RED DOG", gt("validate_frequency_capital_words", N=4, quantifier="at least"), True),
    ("THE big red dog", gt("validate_frequency_capital_words", N=2, quantifier="at least"), False),
    ("THE BIG dog", gt("validate_frequency_capital_words", N=2, quantifier="at most"), True),
    ("THE BIG RED dog", gt("validate_frequency_capital_words", N=2, quantifier="at most"), False),
    ("Some text. Any other questions?", gt("validate_end", end_phrase="Any other questions?"), True),
    ("Any other questions? Some text.", gt("validate_end", end_phrase="Any other questions?"), False),
    ('"quoted answer"', gt("validate_quotation"), True),
    ("unquoted answer", gt("validate_quotation"), False),
    ("no commas here", gt("validate_no_commas"), True),
    ("one, two", gt("validate_no_commas"), False),
]
# generated: counts around the boundary for the counting functions
for n in (1, 3, 5, 10, 20):
    IFEVAL += [
        (" ".join(["word"] * n), gt("validate_word_constraint", N=n, quantifier="at least"), True),
        (" ".join(["word"] * (n + 1)), gt("validate_word_constraint", N=n, quantifier="at most"), False),
        ("x" + " hi" * n, gt("verify_keyword_frequency", word="hi", N=n), True),
        ("x" + " hi" * (n + 1), gt("verify_keyword_frequency", word="hi", N=n), False),
        ("\n".join(["* item"] * n), gt("verify_bullet_points", N=n), True),
        ("\n".join(["* item"] * (n + 1)), gt("verify_bullet_points", N=n), False),
        (" ".join(["[p]"] * n), gt("validate_placeholders", N=n), True),
        (" ".join(["[p]"] * (n - 1)), gt("validate_placeholders", N=n), False),
        ("z" * n, gt("verify_letter_frequency", letter="z", N=n), True),
        ("z" * (n + 2), gt("verify_letter_frequency", letter="z", N=n), False),
    ]


@pytest.mark.parametrize("response,truth,expected", IFEVAL)
def test_ifeval(response, truth, expected):
    v = check("ifeval", response, truth)
    assert v.status == "ok" and v.verified is expected, v


def test_ifeval_covers_every_function_both_ways():
    from tulu_mcore.rewards.ifeval import FUNCTIONS

    assert len(FUNCTIONS) == 25 and len(IFEVAL) >= 100
    seen = {(json.loads(t)["func_name"], e) for _, t, e in IFEVAL}
    assert {(f, e) for f in FUNCTIONS for e in (True, False)} <= seen


def test_tulu3_compat_reproduces_the_release_quirks():
    # 1. placeholders: the release returned a tuple, always truthy
    assert not verify("ifeval", "no placeholders", gt("validate_placeholders", N=3))
    assert verify("ifeval", "no placeholders", gt("validate_placeholders", N=3), tulu3_compat=True)
    # 2. choice: the release checked response-in-option
    assert verify("ifeval", "My answer is yes.", gt("validate_choice", options=["yes", "no"]))
    assert not verify("ifeval", "My answer is yes.", gt("validate_choice", options=["yes", "no"]), tulu3_compat=True)
    assert verify("ifeval", "yes", gt("validate_choice", options=["yes, definitely", "no"]), tulu3_compat=True)
    # 3. capital words "around": exact in the release, +-10 % (at least 1) fixed
    four = "ONE TWO THREE FOUR rest"
    assert verify("ifeval", four, gt("validate_frequency_capital_words", N=5, quantifier="around"))
    assert not verify("ifeval", four, gt("validate_frequency_capital_words", N=5, quantifier="around"),
                      tulu3_compat=True)
    # "!" ends a sentence only after the fix
    assert verify("ifeval", "Hi! There.", gt("verify_sentence_constraint", N=2, quantifier="at least"))
    assert not verify("ifeval", "Hi! There.", gt("verify_sentence_constraint", N=2, quantifier="at least"),
                      tulu3_compat=True)


# ----------------------------------------------------------------------------- robustness, reward
def test_errors_and_unknown_datasets_score_zero_and_are_counted():
    stats = VerifierStats()
    bad_json = check("ifeval", "text", "{not json")
    wrong_arg = check("ifeval", "text", gt("verify_letter_frequency", letter="ab", N=1))
    unknown = check("code", "print(1)", "1")
    for name, v in (("ifeval", bad_json), ("ifeval", wrong_arg), ("code", unknown)):
        assert not v.verified
        stats.add(name, v)
    assert bad_json.status == wrong_arg.status == "error" and "ValueError" in wrong_arg.detail
    assert unknown.status == "unknown dataset"
    assert stats[("ifeval", "error")] == 2 and stats[("code", "unknown dataset")] == 1


def test_a_hanging_check_times_out(monkeypatch):
    from tulu_mcore.rewards import math_answer

    def hang(*a, **k):
        while True:
            time.sleep(0.01)

    monkeypatch.setattr(math_answer, "verify", hang)
    t0 = time.time()
    v = check("math", "\\boxed{1}", "1", timeout_s=0.3)
    assert v == Verdict(False, "timeout", "over 0.3 s") and time.time() - t0 < 2


def test_reward():
    ok, bad = Verdict(True, "ok"), Verdict(False, "ok")
    assert reward(ok, True) == 10.0 and reward(bad, True) == 0.0
    # the release's non_stop_penalty: the score of a response without EOS is replaced, verified or not
    assert reward(ok, False, non_stop_penalty=True, penalty_reward_value=-10.0) == -10.0  # Tülu 3 PPO
    assert reward(ok, False, non_stop_penalty=True, penalty_reward_value=0.0) == 0.0  # Tülu 3.1 GRPO
    assert reward(bad, False, non_stop_penalty=True, penalty_reward_value=-10.0) == -10.0
    assert reward(ok, True, non_stop_penalty=True, penalty_reward_value=-10.0) == 10.0  # ended: untouched
    assert reward(ok, False) == 10.0  # no penalty unless asked


@pytest.mark.parametrize("compat", [False, True])
@pytest.mark.parametrize("answer", ["10^{10^{9}}", "2^{123456789}", "9999!", "10^{10^{10^{10}}}"])
def test_explosive_answers_are_scored_at_once(answer, compat):
    """A dozen tokens a policy can learn to emit would stall SymPy's big-integer arithmetic for minutes,
    which no signal interrupts: such candidates are compared as strings only."""
    import time

    t0 = time.time()
    v = check("math", f"The answer is $\\boxed{{{answer}}}$.", "5", tulu3_compat=compat, timeout_s=30)
    assert v.verified is False and v.status == "ok" and time.time() - t0 < 2
    assert check("math", f"\\boxed{{{answer}}}", answer, tulu3_compat=compat).verified  # the same string still matches


# ----------------------------------------------------------------------------- the hard bound
def test_isolated_checks_agree_with_in_process_checks():
    from tulu_mcore.rewards.isolated import IsolatedChecker

    cases = [("math", "So $\\boxed{\\frac{1}{2}}$.", "0.5"), ("math", "\\boxed{3}", "4"),
             ("gsm8k", "It is 72 clips.\n#### 72", "72"), ("ifeval", "hi", gt("verify_letter_frequency", letter="ab", N=1)),
             ("code", "print(1)", "1"), ("math", "\\boxed{1}", None), ("math", "\\boxed{10^{10^{9}}}", "5"),
             ("math", "a \ud800 lone surrogate, \\boxed{2}", "2")]
    with IsolatedChecker(timeout_s=5) as c:
        for compat in (False, True):
            for dataset, response, truth in cases:
                assert c.check(dataset, response, truth, tulu3_compat=compat) == check(
                    dataset, response, truth, tulu3_compat=compat), (dataset, response, compat)
        assert c.kills == 0


def test_a_check_that_no_signal_ends_is_killed_and_the_next_check_runs_in_a_fresh_worker():
    """A worker that gives no verdict (stopped here; in training: one big-integer operation that SIGALRM
    cannot interrupt) is killed at timeout_s + grace_s; the check scores a timeout and scoring goes on."""
    import os
    import signal

    from tulu_mcore.rewards.isolated import IsolatedChecker

    with IsolatedChecker(timeout_s=0.5, grace_s=0.5) as c:
        assert c.check("math", "\\boxed{2}", "2").verified
        first = c.pid
        os.kill(first, signal.SIGSTOP)
        t0 = time.time()
        v = c.check("math", "\\boxed{2}", "2")
        assert v.status == "timeout" and not v.verified and "killed" in v.detail and 0.9 < time.time() - t0 < 3
        assert c.kills == 1 and c.pid is None
        assert c.check("math", "\\boxed{2}", "2").verified and c.pid not in (None, first)
        os.kill(c.pid, signal.SIGKILL)  # died between checks: restarted, not scored as an error
        time.sleep(0.2)
        assert c.check("math", "\\boxed{3}", "3") == Verdict(True, "ok") and c.kills == 1


def test_the_verifier_worker_dies_with_its_trainer(tmp_path):
    import os
    import subprocess
    import sys

    code = ("import os, sys; from tulu_mcore.rewards.isolated import IsolatedChecker; c = IsolatedChecker(); "
            "c.check('math', '\\\\boxed{1}', '1'); print(c.pid, flush=True); os._exit(0)")
    pid = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    deadline = time.time() + 5
    while time.time() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"the verifier worker {pid} outlived its trainer")
