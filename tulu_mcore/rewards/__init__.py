"""Verifiable rewards: does a response answer a GSM8K / MATH / IFEval-constraint prompt correctly?

``verify(dataset, response, ground_truth, *, tulu3_compat=False) -> bool`` dispatches on the row's
``dataset`` field (case-insensitive). Every check is bounded in time (symbolic equivalence can hang):
a timeout or an error scores False; :func:`check` also says which (``status``), so that a trainer can
count them. ``tulu3_compat=True`` reproduces the released Tülu 3 checkers' behaviours, bugs included.
The bound uses SIGALRM: on the main thread; elsewhere checks run unbounded.
"""

from __future__ import annotations

import signal
import threading
from collections import Counter
from dataclasses import dataclass

from tulu_mcore.rewards import gsm8k, ifeval, math_answer

DATASETS = ("gsm8k", "math", "ifeval")
TIMEOUT_S = 5.0


@dataclass(frozen=True)
class Verdict:
    verified: bool
    status: str  # "ok" | "timeout" | "error" | "unknown dataset"
    detail: str = ""


class _Timeout(Exception):
    pass


def _raise_timeout(signum, frame):
    raise _Timeout()


def _run(dataset: str, response: str, ground_truth, tulu3_compat: bool) -> bool:
    if dataset == "gsm8k":
        return gsm8k.verify(response, ground_truth, tulu3_compat=tulu3_compat)
    if dataset == "math":
        return math_answer.verify(response, ground_truth)
    return ifeval.verify(response, ground_truth, tulu3_compat=tulu3_compat)


def check(dataset: str, response: str, ground_truth, *, tulu3_compat: bool = False,
          timeout_s: float = TIMEOUT_S) -> Verdict:
    name = str(dataset).lower()
    if name not in DATASETS:
        return Verdict(False, "unknown dataset", f"dataset {dataset!r} is not one of {list(DATASETS)}")
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


def reward(verdict: Verdict, finished: bool, *, verified_reward: float = 10.0, no_eos_penalty: float = 0.0) -> float:
    """Tülu 3's score: `verified_reward` when verified, else 0; a response that never emitted EOS gets
    `no_eos_penalty` instead (-10 in Tülu 3 PPO, 0 in GRPO)."""
    if not finished and no_eos_penalty:
        return no_eos_penalty
    return verified_reward if verdict.verified else 0.0


class VerifierStats(Counter):
    """Verdicts by (dataset, status), for a step's metrics."""

    def add(self, dataset: str, verdict: Verdict) -> None:
        self[(str(dataset).lower(), "verified" if verdict.verified else verdict.status)] += 1
