"""Worker: one rank of a pool that stays up for the test session (see tests/rank_pool.py).

    torchrun --nproc-per-node N tests/workers/pool.py QUEUE_DIR OWNER_PID

Every rank imports the heavy libraries once, then runs the jobs written to QUEUE_DIR one after another,
in order: ``job-NNNNN.json`` = {"target": "pkg.module" | "path/to/script.py", "args": [...], "env": {...}},
run as ``torchrun ... target args`` would run it (as ``__main__``, with ``sys.argv`` set), its stdout and
stderr in ``job-NNNNN.rank<r>.out|err`` and its exit code in ``job-NNNNN.rank<r>.done``. The process group
a job's ``runtime.setup`` creates stays for the next job (``runtime.teardown`` keeps it); a job that
destroys it, or fails on more than one rank, ends the pool after writing its result (the next job starts
a fresh pool). The ranks exit when OWNER_PID (the test session) is gone.
"""

import contextlib
import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path


def run_job(job: dict, out, err) -> int:
    target, args = job["target"], [str(a) for a in job["args"]]
    saved_env, saved_argv = dict(os.environ), sys.argv
    os.environ.update(job.get("env") or {})
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if target.endswith(".py"):
                    sys.argv = [target, *args]
                    runpy.run_path(target, run_name="__main__")
                else:
                    sys.argv = [target, *args]
                    runpy.run_module(target, run_name="__main__", alter_sys=True)
                return 0
            except SystemExit as e:
                code = e.code
                if code is None:
                    return 0
                if isinstance(code, int):
                    return code
                print(code, file=sys.stderr)
                return 1
            except BaseException:  # a process would print the traceback and exit 1
                traceback.print_exc()
                return 1
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_env)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def main(queue: Path, owner: int) -> None:
    # what every job needs: imported once for the session
    import megatron.core  # noqa: F401
    import torch.distributed as dist
    import transformers  # noqa: F401

    from tulu_mcore.runtime.logs import quiet_known_warnings

    quiet_known_warnings()
    import tulu_mcore.cli.train  # noqa: F401
    import tulu_mcore.models.factory  # noqa: F401
    import tulu_mcore.training.run  # noqa: F401

    # a job that destroys the default process group ends the pool after its result: creating another on
    # the same rendezvous store hangs
    destroyed = []
    real_destroy = dist.destroy_process_group

    def destroy(group=None):
        if group is None:
            destroyed.append(True)
        return real_destroy(group)

    dist.destroy_process_group = destroy

    rank = int(os.environ["RANK"])
    (queue / f"ready.rank{rank}").write_text(str(os.getpid()))
    n = 0
    while True:
        path = queue / f"job-{n:05d}.json"
        if not path.is_file():
            if (queue / "stop").exists() or not queue.is_dir() or not alive(owner):
                return  # asked to, or the test session that owns the pool is gone
            time.sleep(0.02)
            continue
        job = json.loads(path.read_text())
        stem = queue / f"job-{n:05d}.rank{rank}"
        with open(f"{stem}.out", "w", buffering=1) as out, open(f"{stem}.err", "w", buffering=1) as err:
            code = run_job(job, out, err)
        # after a failure the ranks may disagree about where they are (one left in a collective): end
        ends = bool(destroyed) or (code != 0 and int(os.environ["WORLD_SIZE"]) > 1)
        Path(f"{stem}.done.tmp").write_text(json.dumps({"code": code, "pool_ends": ends}))
        os.rename(f"{stem}.done.tmp", f"{stem}.done")  # whole, for the test that polls for it
        if ends:
            return
        n += 1


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
