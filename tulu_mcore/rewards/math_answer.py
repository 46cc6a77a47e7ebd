"""MATH: candidate answers from the response, each compared to the ground truth.

Candidates, as Tülu 3's "flex" checker: the content of the last ``\\boxed{}`` (or ``\\boxed x``); the
Minerva sentence "Final Answer: The final answer is X. I hope it is correct." (normalised); only when
neither exists, the text between the last two ``$``; else the whole normalised output. A candidate
matches when ``math-verify`` finds it equivalent to the ground truth (symbolic and numeric equivalence of
LaTeX), or when the Hendrycks string normalisations of the two are equal.

Deliberate differences from the released checker (reproduced by :mod:`tulu_mcore.rewards.math_tulu3`
under ``tulu3_compat=True``): math-verify instead of SymPy's ``parse_latex`` (lists, tuples, intervals,
percents and units compare whole); the last of ``\\boxed``/``\\fbox``, braced or not, is the boxed answer;
the Minerva sentence needs no "I hope it is correct" of its own, and an empty one is skipped; a boxed
ground truth is unboxed; Hendrycks' normalisation never fails (a bare ``%`` is removed too).
"""

from __future__ import annotations

import re

# Minerva's normalisation (Lewkowycz et al. 2022, appendix D): replacements, then removed words
_SUBSTITUTIONS = [("an ", ""), ("a ", ""), (".$", "$"), ("\\$", ""), ("\\ ", ""), (" ", ""), ("mbox", "text"),
                  (",\\text{and}", ","), ("\\text{and}", ","), ("\\text{m}", "\\text{}")]
_REMOVED = ["square", "ways", "integers", "dollars", "mph", "inches", "ft", "hours", "km", "units", "\\ldots", "sue",
            "points", "feet", "minutes", "digits", "cents", "degrees", "cm", "gm", "pounds", "meters", "meals",
            "edges", "students", "childrentickets", "multiples", "\\text{s}", "\\text{.}", "\\text{\ns}",
            "\\text{}^2", "\\text{}^3", "\\text{\n}", "\\text{}", r"\mathrm{th}", r"^\circ", r"^{\circ}", r"\;",
            r",\!", "{,}", '"', "\\dots"]
_MINERVA = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")


def last_boxed(text: str) -> str | None:
    """The content of the last \\boxed{...} (balanced braces) or \\boxed x; None without one."""
    i = text.rfind("\\boxed")
    j = text.rfind("\\fbox")
    if i < 0 and j < 0:
        return None
    start = max(i, j)
    name = "\\boxed" if start == i else "\\fbox"
    rest = text[start + len(name):]
    if rest.startswith(" "):  # \boxed 5
        return rest[1:].split("$")[0].strip() or None
    if not rest.startswith("{"):
        return None
    depth = 0
    for k, ch in enumerate(rest):
        depth += ch == "{"
        depth -= ch == "}"
        if depth == 0:
            return rest[1:k]
    return None


def normalize_final_answer(answer: str) -> str:
    answer = answer.split("=")[-1]
    for before, after in _SUBSTITUTIONS:
        answer = answer.replace(before, after)
    for expr in _REMOVED:
        answer = answer.replace(expr, "")
    answer = re.sub(r"(.*?)(\$)(.*?)(\$)(.*)", "$\\3$", answer)
    answer = re.sub(r"(\\text\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\textbf\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\overline\{)(.*?)(\})", "\\2", answer)
    answer = re.sub(r"(\\boxed\{)(.*)(\})", "\\2", answer)
    answer = re.sub(r"(frac)([^{])(.)", "frac{\\2}{\\3}", answer)
    answer = re.sub(r"(sqrt)([^{])", "sqrt{\\2}", answer)
    answer = answer.replace("$", "")
    if answer.replace(",", "").isdigit():
        answer = answer.replace(",", "")
    return answer


def candidates(response: str) -> list[str]:
    out = []
    boxed = last_boxed(response)
    if boxed is not None:
        out.append(boxed)
    m = _MINERVA.search(response + " I hope it is correct.")
    if m and m.group(1).strip():
        out.append(normalize_final_answer(m.group(1).strip()))
    if not out:
        dollars = [k for k, ch in enumerate(response) if ch == "$"]
        if len(dollars) >= 2:
            out.append(normalize_final_answer(response[dollars[-2] + 1:dollars[-1]]))
    if not out:
        out.append(normalize_final_answer(response))
    return out


# ------------------------------------------------------------------ Hendrycks' string normalisation
def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\frac"
        if not sub or sub[0] == "{":
            out += sub
            continue
        if len(sub) < 2:
            return s
        a, b, rest = sub[0], sub[1], sub[2:]
        out += f"{{{a}}}{{{b}}}{rest}" if b != "{" else f"{{{a}}}{b}{rest}"
    return out


def _fix_slash(s: str) -> str:
    if s.count("/") != 1:
        return s
    a, b = s.split("/")
    if re.fullmatch(r"-?\d+", a) and re.fullmatch(r"-?\d+", b):
        return f"\\frac{{{int(a)}}}{{{int(b)}}}"
    return s


def _fix_sqrt(s: str) -> str:
    return re.sub(r"\\sqrt([^{\\])", r"\\sqrt{\1}", s)


def strip_string(s: str) -> str:
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # units on the right
        s = s.split("\\text{ ")[0]
    s = s.replace("\\%", "").replace("%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    if s.count("=") == 1 and len(s.split("=")[0]) <= 2:
        s = s.split("=")[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_slash(s)


def hendrycks_equiv(a: str, b: str) -> bool:
    return strip_string(a) == strip_string(b)


# A power whose exponent is itself a power or has 4+ digits, or a factorial of a 4+ digit number: SymPy
# would evaluate it exactly (10^{10^{9}}: minutes of big-integer arithmetic that no signal interrupts).
_EXPLOSIVE = re.compile(r"\^\s*\{[^{}]*\^|\^\s*\{?\s*[-+]?\d{4,}|\d{4,}\s*!|\\uparrow")


def explosive(text: str) -> bool:
    """Whether symbolic evaluation of `text` could run for minutes: such answers are compared as strings only."""
    return bool(_EXPLOSIVE.search(str(text)))


def math_verify_equiv(candidate: str, ground_truth: str) -> bool:
    from math_verify import parse, verify

    gold = parse(f"${ground_truth}$", parsing_timeout=None)
    pred = parse(f"${candidate}$", parsing_timeout=None)
    return bool(gold and pred and verify(gold, pred, timeout_seconds=None))


def verify(response: str, ground_truth: str) -> bool:
    gt = str(ground_truth)
    inner = last_boxed(gt)  # a ground truth may itself be boxed
    gt = inner if inner is not None else gt
    for cand in candidates(response):
        if hendrycks_equiv(cand, gt) or (not explosive(cand) and not explosive(gt) and math_verify_equiv(cand, gt)):
            return True
    return False
