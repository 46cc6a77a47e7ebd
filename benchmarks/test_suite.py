"""Where the test suite's time goes: per-test durations, the share spent starting processes (Python,
torch, megatron-core and the project imported, the process group and parallel state set up) against
the work itself, and how many tests and assertions there are.

    python benchmarks/test_suite.py run OUT_DIR [--checkout DIR] [-- PYTEST_ARGS...]
    python benchmarks/test_suite.py report OUT_DIR [OUT_DIR_2]

`run` runs the README's test command (`bash scripts/test.sh --durations=0`, in DIR, default this
checkout) with two probes on PYTHONPATH: a ``sitecustomize`` that records, for every Python process of
the run (pytest, torchrun agents, ranks, CLI subprocesses, the test pool, vLLM's), its start, the moment
``tulu_mcore.runtime.setup`` first returned (its start-up is over) and its end; and a pytest plugin that
counts the assertions that passed in the test process (``enable_assertion_pass_hook``; assertions inside
the ranks a test starts are not counted there). `report` prints (and with two directories compares):
wall time, tests, assertions (executed, and ``assert`` statements in tests/), the 30 slowest, and the
process time split into start-up and work.

Start-up of a process tree started by a test = from the first process's start (torchrun's agent, or the
CLI) to the moment its ranks finished ``runtime.setup``; processes that never call it (CLI help, the
planner, data inspection) count wholly as start-up when they live under 15 s. Process seconds are summed
over processes, so two ranks starting together count twice: the split is of CPU-side occupancy, not of
wall time.
"""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SITECUSTOMIZE = '''
import atexit, json, os, sys, time
_log = os.environ.get("TULU_PROCESS_LOG")
if _log:
    _rec = {"pid": os.getpid(), "ppid": os.getppid(), "argv": sys.argv[:6], "start": None, "ready": None,
            "end": None}
    try:
        with open(f"/proc/{os.getpid()}/stat") as f:  # the process's real start, before the interpreter
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(l.split()[1]) for l in f if l.startswith("btime"))
        _rec["start"] = boot + ticks / os.sysconf("SC_CLK_TCK")
    except Exception:
        _rec["start"] = time.time()

    class _Watch:
        """Wraps tulu_mcore.runtime.setup when that module is first imported."""
        def find_spec(self, name, path=None, target=None):
            if name != "tulu_mcore.runtime":
                return None
            sys.meta_path.remove(self)
            import importlib.util
            spec = importlib.util.find_spec(name)
            loader = spec.loader
            real_exec = loader.exec_module
            def exec_module(module):
                real_exec(module)
                setup = module.setup
                def timed(*a, **k):
                    out = setup(*a, **k)
                    if _rec["ready"] is None:
                        _rec["ready"] = time.time()
                    return out
                module.setup = timed
            loader.exec_module = exec_module
            return spec

    sys.meta_path.insert(0, _Watch())

    def _write():
        _rec["argv"] = [str(a) for a in sys.argv[:6]]
        _rec["end"] = time.time()
        with open(_log, "a") as f:
            f.write(json.dumps(_rec) + "\\n")
    atexit.register(_write)
'''

PLUGIN = '''
import json, os
_count = [0]

def pytest_assertion_pass(item, lineno, orig, expl):
    _count[0] += 1

def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("TULU_ASSERT_LOG")
    if path:
        with open(path, "w") as f:
            json.dump({"assertions_passed": _count[0], "tests": session.testscollected}, f)
'''


def run(out: Path, checkout: Path, pytest_args: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    probes = Path(tempfile.mkdtemp(prefix="tulu-suite-probes-"))
    (probes / "sitecustomize.py").write_text(textwrap.dedent(SITECUSTOMIZE))
    (probes / "tulu_suite_stats.py").write_text(textwrap.dedent(PLUGIN))
    for name in ("processes.jsonl",):
        (out / name).unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(probes), os.environ.get("PYTHONPATH")])),
           "TULU_PROCESS_LOG": str(out / "processes.jsonl"), "TULU_ASSERT_LOG": str(out / "assertions.json")}
    cmd = ["bash", "scripts/test.sh", "--durations=0", "-p", "tulu_suite_stats", "-o",
           "enable_assertion_pass_hook=true", *pytest_args]
    t0 = time.time()
    with open(out / "pytest.txt", "w") as log:
        proc = subprocess.run(cmd, cwd=checkout, env=env, stdout=log, stderr=subprocess.STDOUT)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=checkout, capture_output=True, text=True).stdout.strip()
    (out / "run.json").write_text(json.dumps({"command": " ".join(cmd), "commit": commit, "wall_s": time.time() - t0,
                                              "exit_code": proc.returncode, "cpus": os.cpu_count()}, indent=1))
    print(f"{out}: exit {proc.returncode} in {time.time() - t0:.0f} s")


def assert_statements(checkout: Path) -> int:
    n = 0
    for path in (checkout / "tests").rglob("*.py"):
        n += sum(isinstance(node, ast.Assert) for node in ast.walk(ast.parse(path.read_text())))
    return n


def durations(text: str) -> list[tuple[float, str, str]]:
    return [(float(m.group(1)), m.group(2), m.group(3))
            for m in re.finditer(r"^([0-9.]+)s (call|setup|teardown)\s+(\S+)", text, re.M)]


def process_split(path: Path) -> dict:
    """Process seconds in start-up and in work (see the module docstring)."""
    procs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    procs = [p for p in procs if p["start"] is not None and p["end"] is not None]
    by_pid = {p["pid"]: p for p in procs}

    def is_test_process(p) -> bool:  # python -m pytest (not a rank whose arguments name pytest's tmp dirs)
        return bool(p["argv"]) and p["argv"][0].endswith(("pytest/__main__.py", "/pytest", "py.test"))

    def launch_start(p) -> float:
        """The start of the launch `p` belongs to: its topmost logged ancestor below the test process."""
        start, up = p["start"], by_pid.get(p["ppid"])
        while up is not None and not is_test_process(up):
            start, up = up["start"], by_pid.get(up["ppid"])
        return start

    startup = work = 0.0
    ranks = 0
    for p in procs:
        argv = " ".join(p["argv"])
        life = p["end"] - p["start"]
        if is_test_process(p) or "torch.distributed.run" in argv:
            continue  # the test process's time is the tests'; an agent's waiting is its ranks'
        if p["ready"] is not None:  # a rank (or a one-process command) that set up megatron-core
            ranks += 1
            s = min(p["ready"] - launch_start(p), life + p["start"] - launch_start(p))
            startup += s
            work += p["end"] - p["ready"]
        elif life < 15:  # a command that built no model (help, the planner, data inspection, a script)
            startup += life
        else:  # e.g. a vLLM engine, a Slurm daemon
            work += life
    return {"processes": len(procs), "ranks": ranks, "startup_s": startup, "work_s": work,
            "startup_share": startup / (startup + work) if startup + work else 0.0}


def summary(out: Path) -> dict:
    text = (out / "pytest.txt").read_text()
    run_info = json.loads((out / "run.json").read_text())
    asserts = json.loads((out / "assertions.json").read_text()) if (out / "assertions.json").is_file() else {}
    m = re.search(r"=+ (.*) in ([0-9.]+)s", text)
    d = sorted(durations(text), reverse=True)
    checkout = Path(run_info.get("checkout", ROOT))
    return {"run": run_info, "result": m.group(1) if m else "?", "pytest_s": float(m.group(2)) if m else None,
            "tests": asserts.get("tests"), "assertions_passed": asserts.get("assertions_passed"),
            "assert_statements": assert_statements(checkout) if checkout.is_dir() else None,
            "slowest": d[:30], "split": process_split(out / "processes.jsonl")}


def report(dirs: list[Path]) -> None:
    for out in dirs:
        s = summary(out)
        r = s["run"]
        print(f"== {out} (commit {r['commit'][:10]}, {r['cpus']} CPUs)")
        print(f"{s['result']} in {s['pytest_s']:.0f} s (pytest), {r['wall_s']:.0f} s wall with set-up")
        print(f"tests: {s['tests']}; assertions passed in the test process: {s['assertions_passed']}; "
              f"assert statements in tests/: {s['assert_statements']}")
        sp = s["split"]
        print(f"processes: {sp['processes']} ({sp['ranks']} set up megatron-core); start-up "
              f"{sp['startup_s']:.0f} s, work {sp['work_s']:.0f} s (process seconds; start-up share "
              f"{sp['startup_share']:.0%})")
        print("slowest 30:")
        for sec, phase, name in s["slowest"]:
            print(f"  {sec:8.2f} s {phase:8s} {name}")


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "run":
        rest = argv[2:]
        checkout = ROOT
        if rest[:1] == ["--checkout"]:
            checkout, rest = Path(rest[1]).resolve(), rest[2:]
        if rest[:1] == ["--"]:
            rest = rest[1:]
        run(Path(argv[1]).resolve(), checkout, rest)
        info = json.loads((Path(argv[1]) / "run.json").read_text())
        info["checkout"] = str(checkout)
        (Path(argv[1]) / "run.json").write_text(json.dumps(info, indent=1))
        return 0
    if len(argv) >= 2 and argv[0] == "report":
        report([Path(a) for a in argv[1:]])
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
