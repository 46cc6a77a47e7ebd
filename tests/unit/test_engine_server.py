"""The vLLM engine's control port (rollout/vllm_side/server.py) without vLLM: connections that do not
prove the key — closed at once, a wrong key, silence — are refused and the engine serves on; only the
engine's operations can be called; the weight hand-off file leaves nothing behind when the engine is
killed in the middle of a push."""

import importlib.util
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import AuthenticationError, Client

import pytest

from tulu_mcore.launch.engine import SIDE_DIR

KEY = bytes.fromhex("00112233445566778899aabbccddeeff")


def server_module():
    spec = importlib.util.spec_from_file_location("tulu_engine_server", SIDE_DIR / "server.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class FakeServer:  # the engine's operations, without vLLM
    def __init__(self):
        self.calls = []

    def info(self):
        self.calls.append("info")
        return {"version": 7}

    def generate(self, **kw):
        raise RuntimeError("out of memory")


@pytest.fixture
def engine():
    srv = server_module()
    fake = FakeServer()
    listener = socket.create_server(("127.0.0.1", 0))
    thread = threading.Thread(target=srv.serve, args=(fake, listener, KEY, False, 0.5), daemon=True)
    thread.start()
    yield listener.getsockname(), fake, thread
    if thread.is_alive():
        with Client(listener.getsockname(), authkey=KEY) as c:
            c.send({"op": "shutdown"})
            c.recv()
    thread.join(10)
    listener.close()


def ask(address, request):
    with Client(address, authkey=KEY) as c:
        c.send(request)
        return c.recv()


def test_unproven_connections_are_refused_and_the_engine_serves_on(engine, capfd):
    address, fake, thread = engine
    socket.create_connection(address).close()  # connect and close (a port scan)
    with pytest.raises(AuthenticationError):
        Client(address, authkey=b"not the key")
    silent = socket.create_connection(address)  # says nothing: dropped after the handshake time
    t0 = time.time()
    assert ask(address, {"op": "info"})["version"] == 7 and time.time() - t0 < 5
    silent.close()
    assert thread.is_alive() and fake.calls == ["info"]
    assert capfd.readouterr().out.count("[engine] refused a connection from 127.0.0.1") == 3


def test_only_the_engines_operations_can_be_called(engine):
    address, fake, thread = engine
    for request in ({"op": "__init__"}, {"op": "load_weights_from_anywhere"}, {"op": "_load_via_file"}, ["info"]):
        reply = ask(address, request)
        assert reply["ok"] is False and "unknown request" in reply["error"], request
    failed = ask(address, {"op": "generate", "prompts": []})  # an operation's own error: reported, served on
    assert failed["ok"] is False and "out of memory" in failed["error"]
    with Client(address, authkey=KEY) as c:  # several requests on one connection, answered in order
        for _ in range(3):
            c.send({"op": "info"})
            assert c.recv() == {"ok": True, "version": 7, "seconds": pytest.approx(0, abs=1)}
    assert thread.is_alive() and fake.calls == ["info"] * 3


KILLED_MID_PUSH = """
import os, signal, sys
sys.path.insert(0, sys.argv[1])
import server

class LLM:  # a worker reads the chunk through the path it is given, then the engine is killed
    def collective_rpc(self, method, args=()):
        path, meta = args
        with open(path, "rb") as f:
            data = f.read()
        open(sys.argv[3], "wb").write(data)
        os.kill(os.getpid(), signal.SIGKILL)

server.Server(LLM(), shm_dir=sys.argv[2]).load([("w", "float32", [2], b"\\x00" * 4 + b"\\x01" * 4)])
"""


def test_a_push_killed_midway_leaves_no_hand_off_file(tmp_path):
    handoff, read = tmp_path / "shm", tmp_path / "read.bin"
    handoff.mkdir()
    proc = subprocess.run([sys.executable, "-c", KILLED_MID_PUSH, str(SIDE_DIR), str(handoff), str(read)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -9, proc.stderr  # killed while the workers loaded the chunk
    assert read.read_bytes() == b"\x00" * 4 + b"\x01" * 4  # the workers saw the whole chunk
    assert os.listdir(handoff) == []  # nothing left in shared memory
