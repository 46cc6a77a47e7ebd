"""Answer extraction and metrics of the ``*_tulu`` tasks: pure functions of text (and log-probs).

Each follows the OLMES ``::tulu`` setting its task names (see the task files); where lm-eval already has
the benchmark's reference metric (DROP's F1, TruthfulQA's MC2, IFEval's instruction checks) the task
files call lm-eval's, and MATH's flex match is our RLVR verifier's (the same flex rules).
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

_NUMBER = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")


def _clean_number(s: str) -> str:
    return re.sub(r"\.$", "", s.replace(",", "").replace("$", "")).strip().lower()


def last_number(response: str) -> str | None:
    """GSM8K's flex extraction: the last number-looking span of the response ($ and commas dropped, and a
    final period), or None."""
    found = [m.group(0) for m in _NUMBER.finditer(response)]
    return _clean_number(found[-1]) if found else None


def gsm8k_correct(response: str, answer: str) -> bool:
    got = last_number(response)
    return got is not None and got == _clean_number(str(answer))


def math_correct(response: str, answer: str) -> bool:
    """MATH's flex match (boxed, Minerva's "Final Answer" sentence, the last $...$; equivalence by
    math-verify or Hendrycks' normalisation): the RLVR verifier's rules."""
    from tulu_mcore.rewards import verify

    return bool(answer) and verify("math", response, answer)


_ANSWER_IS = re.compile(r"answer is:?\s*\(?([A-J])\)?(?![A-Za-z])")


def letter(response: str) -> str | None:
    """The chosen letter of a chain-of-thought multiple-choice answer: the last "the answer is (X)" /
    "the answer is: X" (A-J), or None."""
    found = _ANSWER_IS.findall(response)
    return found[-1] if found else None


_BBH = re.compile(r"[Tt]he answer is (.*?)(?:\.?\s*$|\.\s)", re.S)


def bbh_answer(response: str) -> str | None:
    """BBH's chain-of-thought answer: what follows the last "the answer is", up to its final period."""
    found = _BBH.findall(response)
    return found[-1].strip() if found else None


def bbh_correct(response: str, target: str) -> bool:
    got = bbh_answer(response)
    return got is not None and got == target.strip()


def popqa_correct(response: str, answers: list[str]) -> bool:
    """PopQA's match: any gold answer (as written, lower-cased or capitalised) appears in the response."""
    return any(a in response or a.lower() in response or a.capitalize() in response for a in answers)


_FINAL = re.compile(r"final answer is:?\s*(.*?)\.?\s*I hope it is correct", re.S)


def deepmind_math_correct(response: str, answer: str) -> bool:
    """DeepMind Mathematics (0-shot CoT): "the final answer is X. I hope it is correct." (else the last
    number) equivalent to the answer under math-verify or Hendrycks' normalisation."""
    from tulu_mcore.rewards.math_answer import hendrycks_equiv, math_verify_equiv

    found = _FINAL.findall(response)
    got = found[-1].strip().strip("$") if found else last_number(response)
    if not got:
        return False
    return got.strip() == str(answer).strip() or hendrycks_equiv(got, str(answer)) or \
        math_verify_equiv(got, str(answer))


def pass_at_k(n: int, c: int, k: int) -> float:
    """The unbiased pass@k estimate from n samples of which c passed (Chen et al. 2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def macro_mean(items: list) -> float:
    """Mean over subjects of each subject's mean: items are (subject, score)."""
    by = defaultdict(list)
    for subject, score in items:
        by[subject].append(float(score))
    return sum(sum(v) / len(v) for v in by.values()) / len(by) if by else float("nan")


def fenced_code(response: str) -> str:
    """The code of an answer: its first ```python block (else its first ``` block, else the whole text)."""
    for pattern in (r"```python[^\n]*\n(.*?)(?:```|$)", r"```[^\n]*\n(.*?)(?:```|$)"):
        m = re.search(pattern, response, re.S)
        if m:
            return m.group(1)
    return response


def code_completion(response: str) -> str:
    """The code of a completion that continues a ```python block: up to the block's closing fence."""
    return response.split("```")[0]
