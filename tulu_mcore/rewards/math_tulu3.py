"""MATH as the released Tülu 3 checker scored it (``tulu3_compat=True``): open-instruct's "flex" check
(``verify_math_sample`` with the helpers of its ``math_utils``, Nov 2024, unchanged through the Tülu 3.1
GRPO runs), written anew here with the same behaviour, quirks included.

Candidates, in order: the last boxed answer; the Minerva sentence "Final Answer: The final answer is X.
I hope it is correct." (X normalised as Minerva did); only when neither exists, the normalised text between
the last two ``$``; else the whole normalised response. The ground truth is used as given. A candidate
matches when SymPy parses both (``parse_latex``, antlr backend) and their difference simplifies to 0
(``is_equiv``, 5 s at most), or when Hendrycks' normalisations of the two strings are equal.

The release's quirks, all reproduced:

* ``\\boxed `` with a space anywhere wins: the answer is the text after the last ``\\boxed `` up to the next
  ``$``, even when a ``\\boxed{...}`` comes later.
* ``\\fbox{...}`` is looked for only when there is no ``\\boxed`` at all, and is then dropped (its removal
  expects ``\\boxed{``): an fbox answer never counts, and any ``\\boxed`` wins over a later ``\\fbox``.
* ``\\boxed`` not followed by ``{`` (``\\boxed5``), or without a closing brace: no boxed candidate.
* The Minerva pattern is searched in the response with "I hope it is correct." appended with no space, and
  its dots match any character but a newline: the sentence counts only when the response itself
  continues with " I hope it is correct" (and one more character); an empty X is a candidate ("").
* SymPy's LaTeX parser is not strict: it keeps the longest leading expression, so "1, 2" parses as 1 and
  ``\\frac{1}{2}, 3`` equals ``\\frac12``; "(1, 2)", intervals, matrices, ``\\%`` fail to parse;
  ``^\\circ`` is a power of a symbol "circ", ``\\text{cm}`` a product of symbols; ``x = 5`` parses to
  an equation, which cannot be subtracted (no match, as any error).
* Hendrycks' normalisation fails on a second ``\\text{ `` (units), on "a/b" unless a and b are integers,
  on a trailing ``\\sqrt`` or ``\\frac``; a failed normalisation compares the raw strings. Only ``\\%`` is
  removed, a bare ``%`` is kept; ``\\sqrt`` followed by any character c (a backslash too) becomes
  ``\\sqrt{c}``.

SymPy's parser runs on the installed antlr4 runtime through :mod:`tulu_mcore.rewards.sympy_latex`.
Checked against the released functions (SymPy 1.14, antlr4 4.11): the same verdict on 1,057 responses
(MATH-style answers written boxed, Minerva, between ``$``, bare, ``\\boxed `` with a space, and the
quirks above), the same parse of the 389 strings compared.

Not reproduced: time. The release bounded each ``is_equiv`` by 5 s; here it is bounded by 5 s or by what
is left of the caller's bound (``check``'s timeout, 5 s by default), whichever ends first, so a response
whose first candidate takes the full 5 s times out here where the release went on to a later candidate;
and a comparison near the bound can end either way on another machine, in both.
"""

from __future__ import annotations

import re
import signal
import threading
import time
from contextlib import contextmanager

from tulu_mcore.rewards.math_answer import explosive, normalize_final_answer
from tulu_mcore.rewards.sympy_latex import parse_latex

IS_EQUIV_TIMEOUT_S = 5.0
INVALID = "[invalidanswer]"
_MINERVA = re.compile(r"Final Answer: The final answer is(.*?). I hope it is correct.")


# ------------------------------------------------------------------ candidates
def boxed_answer(text: str) -> str | None:
    """The release's boxed answer (``last_boxed_only_string`` then ``remove_boxed``), None without one."""
    if "\\boxed " in text:
        return text.split("\\boxed ")[-1].split("$")[0]
    start = text.rfind("\\boxed")
    if start < 0:
        return None  # an \fbox{...} would be found here, then dropped
    depth = 0
    for k in range(start, len(text)):
        if text[k] == "{":
            depth += 1
        elif text[k] == "}":
            depth -= 1
            if depth == 0:
                span = text[start:k + 1]
                return span[len("\\boxed{"):-1] if span.startswith("\\boxed{") else None
    return None


def minerva_answer(text: str) -> str:
    m = _MINERVA.search(text + "I hope it is correct.")
    return m.group(1).strip() if m else INVALID


def candidates(response: str) -> list[str]:
    out = []
    boxed = boxed_answer(response)
    if boxed is not None:
        out.append(boxed)
    minerva = normalize_final_answer(minerva_answer(response))
    if minerva != INVALID:
        out.append(minerva)
    if not out:
        dollars = [k for k, ch in enumerate(response) if ch == "$"]
        if len(dollars) > 1:
            out.append(normalize_final_answer(response[dollars[-2] + 1:dollars[-1]]))
    if not out:
        out.append(normalize_final_answer(response))
    return out


# ------------------------------------------------------------------ Hendrycks' normalisation, as released
class _Unnormalisable(Exception):
    pass


def _fix_fracs(s: str) -> str:
    parts = s.split("\\frac")
    out = parts[0]
    for sub in parts[1:]:
        out += "\\frac"
        if not sub:
            raise _Unnormalisable("\\frac at the end")
        if sub[0] == "{":
            out += sub
        elif len(sub) < 2:
            return s
        else:
            a, b, rest = sub[0], sub[1], sub[2:]
            out += "{" + a + "}" + (b if b == "{" else "{" + b + "}") + rest
    return out


def _fix_slash(s: str) -> str:
    parts = s.split("/")
    if len(parts) != 2:
        return s
    try:
        a, b = int(parts[0]), int(parts[1])
    except ValueError:
        raise _Unnormalisable("a/b with a non-integer") from None
    return f"\\frac{{{a}}}{{{b}}}" if s == f"{a}/{b}" else s


def _fix_sqrt(s: str) -> str:
    parts = s.split("\\sqrt")
    out = parts[0]
    for sub in parts[1:]:
        if not sub:
            raise _Unnormalisable("\\sqrt at the end")
        out += "\\sqrt" + (sub if sub[0] == "{" else "{" + sub[0] + "}" + sub[1:])
    return out


def strip_string(s: str) -> str:
    """Hendrycks' normalisation as released; raises where the release's raised."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    if "\\text{ " in s:  # units on the right
        parts = s.split("\\text{ ")
        if len(parts) != 2:
            raise _Unnormalisable("more than one \\text{ ")
        s = parts[0]
    s = s.replace("\\%", "")  # a bare % stays
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if not s:
        return s
    if s[0] == ".":
        s = "0" + s
    parts = s.split("=")
    if len(parts) == 2 and len(parts[0]) <= 2:
        s = parts[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    return _fix_slash(s)


def hendrycks_is_equiv(a, b) -> bool:
    try:
        return strip_string(a) == strip_string(b)
    except Exception:  # the release compared the raw strings when its normalisation failed
        return a == b


# ------------------------------------------------------------------ symbolic equivalence, as released
class _IsEquivTimeout(Exception):
    pass


def _on_alarm(signum, frame):
    raise _IsEquivTimeout()


@contextmanager
def _time_limit(seconds: float):
    """SIGALRM after `seconds` on the main thread (elsewhere unbounded, as ``check``), unless an outer timer
    ends first: that one is left to fire, else it is re-armed with what is left of it afterwards."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    outer, _ = signal.getitimer(signal.ITIMER_REAL)
    if outer and outer <= seconds:
        yield
        return
    old = signal.signal(signal.SIGALRM, _on_alarm)
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        if outer:
            signal.setitimer(signal.ITIMER_REAL, max(outer - (time.monotonic() - start), 1e-6))


def is_equiv(a, b) -> bool:
    import sympy

    if explosive(a) or explosive(b):  # the release would spend its 5 s and score no match
        return False
    try:
        with _time_limit(IS_EQUIV_TIMEOUT_S):
            return bool(sympy.simplify(parse_latex(a) - parse_latex(b)) == 0)
    except ImportError:
        raise
    except Exception:  # unparsable, not subtractable, not simplifiable, over time: no match
        return False


def verify(response: str, ground_truth) -> bool:
    answers = candidates(response)
    # the release tried is_equiv then Hendrycks per candidate; any match counts, so the cheap test goes first
    return any(hendrycks_is_equiv(a, ground_truth) for a in answers) or any(
        is_equiv(a, ground_truth) for a in answers)
