"""Verifier checks in a child process that is killed when a check outlives its hard bound.

:func:`tulu_mcore.rewards.check` bounds a check with SIGALRM, which Python delivers only between bytecodes:
one big-integer operation inside SymPy (``\\boxed{10^{10^{9}}}`` slipping past the cheap guard) or a
regular expression on a long response runs to its end, minutes later, while the other ranks wait in a
collective. :class:`IsolatedChecker` runs :func:`check` (soft bound included) in a worker process
(:mod:`tulu_mcore.rewards.worker`); a check with no answer after ``timeout_s + grace_s`` kills the worker,
scores ``timeout`` and the next check starts a fresh one. The worker speaks JSON lines, so nothing but
text and JSON values crosses, and it dies with its trainer (``PR_SET_PDEATHSIG``).
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import time

from tulu_mcore.rewards import TIMEOUT_S, Verdict

GRACE_S = 2.0
STARTUP_S = 120.0  # the worker imports SymPy and math-verify before it says it is ready


class IsolatedChecker:
    """``check(dataset, response, ground_truth, tulu3_compat=...)`` with the signature and verdicts of
    :func:`tulu_mcore.rewards.check`, hard-bounded. Also counts the workers it had to kill (``kills``)."""

    def __init__(self, timeout_s: float = TIMEOUT_S, grace_s: float = GRACE_S):
        self.timeout_s, self.grace_s = float(timeout_s), float(grace_s)
        self._proc: subprocess.Popen | None = None
        self._buf = b""
        self.kills = 0

    # ------------------------------------------------------------------ the worker
    def _start(self) -> None:
        self._proc = subprocess.Popen([sys.executable, "-m", "tulu_mcore.rewards.worker"],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=None,
                                      close_fds=True)
        self._buf = b""
        if self._read_line(STARTUP_S) != b"ready":
            self._stop(kill=True)
            raise RuntimeError(f"the verifier worker ({sys.executable} -m tulu_mcore.rewards.worker) did not "
                               f"start within {STARTUP_S:g} s: its error is above")

    def _stop(self, *, kill: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if kill:
            proc.kill()
        else:
            proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        if not proc.stdin.closed:
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass

    def _read_line(self, timeout_s: float) -> bytes | None:
        """The worker's next line, or None when it gave none within `timeout_s` or died."""
        fd = self._proc.stdout.fileno()
        end = time.monotonic() + timeout_s
        while b"\n" not in self._buf:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                return None
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    # ------------------------------------------------------------------ checks
    def check(self, dataset: str, response: str, ground_truth, *, tulu3_compat: bool = False) -> Verdict:
        if self._proc is not None and self._proc.poll() is not None:
            self._stop(kill=True)  # it died between checks (killed from outside): start a fresh one
        if self._proc is None:
            self._start()
        request = json.dumps({"dataset": dataset, "response": response, "ground_truth": ground_truth,
                              "tulu3_compat": tulu3_compat, "timeout_s": self.timeout_s}) + "\n"
        try:
            self._proc.stdin.write(request.encode())
            self._proc.stdin.flush()
        except BrokenPipeError:
            self._stop(kill=True)
            return Verdict(False, "error", "the verifier worker exited")
        line = self._read_line(self.timeout_s + self.grace_s)
        if line is None:
            died = self._proc.poll() is not None
            self._stop(kill=True)
            if died:  # a crash (memory, a signal): no reward, counted as an error
                return Verdict(False, "error", "the verifier worker exited during the check")
            self.kills += 1
            return Verdict(False, "timeout", f"no verdict after {self.timeout_s + self.grace_s:g} s: worker killed")
        verified, status, detail = json.loads(line)
        return Verdict(bool(verified), str(status), str(detail))

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def close(self) -> None:
        self._stop(kill=False)

    def __enter__(self) -> "IsolatedChecker":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        if self._proc is not None:
            self._stop(kill=True)
