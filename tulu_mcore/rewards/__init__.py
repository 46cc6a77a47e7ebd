"""Verifiable rewards: does a response answer a GSM8K / MATH / IFEval-constraint prompt correctly?

``verify(dataset, response, ground_truth, *, tulu3_compat=False) -> bool`` dispatches on the row's
``dataset`` field (case-insensitive). Every check is bounded in time (symbolic equivalence can hang):
a timeout or an error scores False; :func:`check` also says which (``status``), so that a trainer can
count them. ``tulu3_compat=True`` reproduces the released Tülu 3 checkers' behaviours, bugs included:
the response is cut to the text after its last ``<|assistant|>\n`` and stripped, as the release did with
the decoded prompt+response, then GSM8K and IFEval run their compat variants and MATH runs
:mod:`tulu_mcore.rewards.math_tulu3` (SymPy, as released) instead of math-verify.
The bound uses SIGALRM: on the main thread; elsewhere checks run unbounded.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from dataclasses import dataclass

from tulu_mcore.rewards import gsm8k, ifeval, math_answer, math_tulu3

DATASETS = ("gsm8k", "math", "ifeval")
TIMEOUT_S = 5.0
ASSISTANT_TAG = "<|assistant|>\n"  # Tülu 3's chat template


@dataclass(frozen=True)
class Verdict:
    verified: bool
    status: str  # "ok" | "timeout" | "error" | "unknown dataset"
    detail: str = ""


class _Timeout(BaseException):  # not an Exception: a checker's own `except Exception` must not swallow it
    pass


def _raise_timeout(signum, frame):
    raise _Timeout()


def _run(dataset: str, response: str, ground_truth, tulu3_compat: bool) -> bool:
    if tulu3_compat:
        response = response.split(ASSISTANT_TAG)[-1].strip()
    if dataset == "gsm8k":
        return gsm8k.verify(response, ground_truth, tulu3_compat=tulu3_compat)
    if dataset == "math":
        if tulu3_compat:
            return math_tulu3.verify(response, ground_truth)
        return math_answer.verify(response, ground_truth)
    return ifeval.verify(response, ground_truth, tulu3_compat=tulu3_compat)


def check(dataset: str, response: str, ground_truth, *, tulu3_compat: bool = False,
          timeout_s: float = TIMEOUT_S) -> Verdict:
    name = str(dataset).lower()
    if name not in DATASETS:
        return Verdict(False, "unknown dataset", f"dataset {dataset!r} is not one of {list(DATASETS)}")
    if ground_truth is None:  # as released: no reward ("None" would otherwise match the text "none")
        return Verdict(False, "error", "no ground truth")
    bounded = threading.current_thread() is threading.main_thread() and timeout_s > 0
    if bounded:
        old = signal.signal(signal.SIGALRM, _raise_timeout)
        signal.setitimer(signal.ITIMER_REAL, timeout_s)
    try:
        return Verdict(bool(_run(name, response, ground_truth, tulu3_compat)), "ok")
    except _Timeout:
        return Verdict(False, "timeout", f"over {timeout_s:g} s")
    except Exception as e:  # a malformed ground truth, a checker's own error: no reward, counted
        return Verdict(False, "error", f"{type(e).__name__}: {e}")
    finally:
        if bounded:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)


def verify(dataset: str, response: str, ground_truth, *, tulu3_compat: bool = False) -> bool:
    return check(dataset, response, ground_truth, tulu3_compat=tulu3_compat).verified


def reward(verdict: Verdict, finished: bool, *, verified_reward: float = 10.0, non_stop_penalty: bool = False,
           penalty_reward_value: float = 0.0) -> float:
    """Tülu 3's score: `verified_reward` when verified, else 0; with `non_stop_penalty`, a response that
    never emitted EOS scores `penalty_reward_value` instead, whatever its verdict (Tülu 3 PPO: -10,
    Tülu 3.1 GRPO: 0)."""
    if non_stop_penalty and not finished:
        return penalty_reward_value
    return verified_reward if verdict.verified else 0.0


class VerifierStats(Counter):
    """Verdicts by (dataset, status), for a step's metrics."""

    def add(self, dataset: str, verdict: Verdict) -> None:
        self[(str(dataset).lower(), "verified" if verdict.verified else verdict.status)] += 1
