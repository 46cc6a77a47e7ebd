"""One trainer per run directory: a second lock on the same run.dir is refused with the holder; after the
first releases it (end of the run, or its process gone), the directory can be used again."""

import os
import socket
import subprocess
import sys

import pytest

from tulu_mcore.errors import UserError
from tulu_mcore.training.lock import lock_run_dir


class Owner:
    pass


def test_a_second_writer_is_refused_until_the_first_releases(tmp_path):
    logs = []
    first = Owner()
    release = lock_run_dir(first, tmp_path / "run", True, logs.append)
    with pytest.raises(UserError) as e:
        lock_run_dir(Owner(), tmp_path / "run", True, logs.append)
    assert f"in use by another trainer (host and pid: {socket.gethostname()} {os.getpid()})" in str(e.value)
    release()
    lock_run_dir(Owner(), tmp_path / "run", True, logs.append)()  # free again
    assert logs == []


def test_another_process_holding_the_lock(tmp_path):
    run = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from pathlib import Path; from tulu_mcore.training.lock import lock_run_dir\n"
        "class O: pass\n"
        f"o = O(); lock_run_dir(o, Path({str(run)!r}), True, print); print('held', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid: {socket.gethostname()} {holder.pid}"):
            lock_run_dir(Owner(), run, True, print)
    finally:
        holder.kill()
        holder.wait()
    lock_run_dir(Owner(), run, True, print)()  # the holder's process ended: its lock went with it
