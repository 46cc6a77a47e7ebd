"""A real Slurm for the tests: Debian's slurmctld + slurmd + munge on loopback, with their own state
directory, started and stopped by the test session (no systemd); one node, or several (one slurmd per
node on 127.0.0.x, Slurm's multiple-slurmd mode).

Debian's packages are installed on first use (root). Settings that matter: the node is `localhost`
on 127.0.0.1 whatever the hostname; munged gets its own socket/key/log (running it as root with the
defaults is refused); ``cred_expire=10`` shortens the wait before a requeued job starts again (the
default makes it ~150 s); ``MinJobAge`` keeps finished jobs visible to ``scontrol``; CPUs are declared
beyond the real ones (``config_overrides``) so that 2-task jobs fit a 2-core machine; the controller and
slurmd listen on free ports of their own (not Slurm's 6817/6818), so that two test sessions on one
machine do not meet.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")


def _installed() -> bool:
    return all(shutil.which(b) for b in ("slurmctld", "slurmd", "sbatch", "munged", "mungekey"))


def install() -> None:
    if _installed():
        return
    if os.geteuid() != 0:
        raise RuntimeError(f"Slurm is not installed and installing it needs root: apt-get install {' '.join(PACKAGES)}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=True, env=env, capture_output=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *PACKAGES], check=True, env=env,
                   capture_output=True)


CONF = """\
ClusterName=tests
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={d}/munge/sock,cred_expire=10
StateSaveLocation={d}/ctld
SlurmdSpoolDir={d}/d/%n
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd-%n.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd-%n.log
PlugStackConfig={d}/plugstack.conf
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
MpiDefault=none
MailProg=/bin/true
MinJobAge=3600
ReturnToService=2
SlurmdParameters=config_overrides
{nodes}
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
SlurmctldPort={ctld_port}
"""
# one slurmd per node, each on its own loopback address and port (Slurm's multiple-slurmd mode); names
# need not resolve: jobs reach a node through its NodeAddr
NODE = "NodeName={name} NodeHostname=localhost NodeAddr={addr} Port={port} CPUs={cpus} RealMemory=1000 State=UNKNOWN"


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


class LocalSlurm:
    """`nodes` == 1: one node, `localhost`; more: `n1`, `n2`, ... on 127.0.0.1, 127.0.0.2, ..."""

    def __init__(self, root: Path, cpus: int = 4, nodes: int = 1):
        self.d = Path(root)
        self.cpus = cpus
        self.names = ["localhost"] if nodes == 1 else [f"n{i + 1}" for i in range(nodes)]
        self.conf = self.d / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def _pid(self, name: str) -> int | None:
        f = self.d / f"{name}.pid"
        try:
            return int(f.read_text().strip())
        except (OSError, ValueError):
            return None

    def run(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check)

    def up(self) -> "LocalSlurm":
        install()
        for sub in ("munge", "ctld", "d", "log"):
            (self.d / sub).mkdir(parents=True, exist_ok=True)
        (self.d / "munge").chmod(0o755)  # munged wants its socket directory world-executable
        key = self.d / "munge" / "munge.key"
        if not key.exists():
            subprocess.run(["mungekey", "-c", "-k", str(key)], check=True, capture_output=True)
        (self.d / "plugstack.conf").write_text("")
        ctld_port, *d_ports = _free_ports(1 + len(self.names))
        nodes = "\n".join(NODE.format(name=n, addr=f"127.0.0.{i + 1}", port=p, cpus=self.cpus)
                          for i, (n, p) in enumerate(zip(self.names, d_ports)))
        for n in self.names:
            (self.d / "d" / n).mkdir(exist_ok=True)
        self.conf.write_text(CONF.format(d=self.d, ctld_port=ctld_port, nodes=nodes))
        m = self.d / "munge"
        subprocess.run(["munged", f"--socket={m / 'sock'}", f"--key-file={key}", f"--log-file={self.d / 'log/munged.log'}",
                        f"--pid-file={self.d / 'munged.pid'}", f"--seed-file={m / 'seed'}"], check=True, capture_output=True)
        self.run("slurmctld", "-c")  # -c: empty job and node state
        for n in self.names:
            self.run("slurmd", "-N", n)
        for _ in range(150):
            out = self.run("sinfo", "-h", "-N", "-o", "%t", check=False).stdout.split()
            if len(out) == len(self.names) and all(t in ("idle", "mix", "alloc") for t in out):
                return self
            time.sleep(0.2)
        logs = "\n".join(f.read_text()[-1500:] for f in (self.d / "log").glob("*.log"))
        raise RuntimeError(f"local Slurm did not come up:\n{logs}")

    def down(self) -> None:
        if self._pid("slurmctld"):
            self.run("scancel", "--user=root", check=False)
        for name in (*(f"slurmd-{n}" for n in self.names), "slurmctld", "munged"):
            pid = self._pid(name)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    if not _running(pid):
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            (self.d / f"{name}.pid").unlink(missing_ok=True)

    # ------------------------------------------------------------------ jobs
    def job(self, job_id: str) -> dict:
        out = self.run("scontrol", "-o", "show", "job", job_id, check=False).stdout
        return dict(re.findall(r"(\w+)=(\S*)", out))

    def wait(self, job_id: str, states=("COMPLETED",), timeout: float = 300) -> dict:
        end = time.time() + timeout
        final = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL")
        info = {}
        while time.time() < end:
            info = self.job(job_id)
            if info.get("JobState") in states or info.get("JobState") in final:
                return info
            time.sleep(0.5)
        raise TimeoutError(f"job {job_id} still {info.get('JobState')} after {timeout}s")


def _running(pid: int) -> bool:
    """Alive and not a zombie (the daemons' double fork leaves zombies where PID 1 does not reap)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False
