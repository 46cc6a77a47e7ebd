"""The verifier worker of :class:`tulu_mcore.rewards.isolated.IsolatedChecker`: one JSON request per line
on stdin, one ``[verified, status, detail]`` line per request on stdout; ends at end of input, or with
its parent."""

from __future__ import annotations

import ctypes
import json
import signal
import sys


def _die_with_parent() -> None:
    try:  # Linux: SIGKILL when the trainer that started us exits, however it exits
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main() -> int:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle
    from tulu_mcore.rewards import check, math_answer, math_tulu3  # noqa: F401  (imported before "ready")

    try:  # the checkers import these on first use: not inside the first check's time bound
        import math_verify  # noqa: F401
        import sympy  # noqa: F401
    except ImportError:
        pass
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    for line in sys.stdin:
        req = json.loads(line)
        v = check(req["dataset"], req["response"], req["ground_truth"], tulu3_compat=req["tulu3_compat"],
                  timeout_s=req["timeout_s"])
        out.write(json.dumps([v.verified, v.status, v.detail]) + "\n")
        out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
