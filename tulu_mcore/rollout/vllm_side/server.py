"""The vLLM engine process of ``rlvr.engine=vllm``: one vLLM ``LLM`` serving the trainer over a socket.

Runs in the vLLM environment (its own Python and dependencies: imports only the standard library,
torch and vllm), started by the trainer, or separately (e.g. as its own srun step) and then named by
``rlvr.vllm.address``:

    TULU_ENGINE_AUTHKEY=<hex> python server.py --model DIR --host 0.0.0.0 --port 5555 --tp 4

``--model`` holds the policy's config.json (weights are pushed by the trainer; the engine starts with
dummy weights unless ``--load-weights``). An engine over several nodes (vLLM's multiprocessing backend,
no Ray: ``--nnodes N --node-rank R --master-addr HOST --master-port PORT``, the same command on every
node): node 0 serves the trainer, nodes 1.. run vLLM's headless workers for their share of the TP ranks
(weight chunks of the memory transport then travel through vLLM's RPC channel, not shared memory;
the collective transport reaches every node's workers directly). Requests (pickled dicts over
multiprocessing.connection, answered in order): generate, begin/load/end of a weight update, load_dir
(safetensors on disk), collective_init/collective_push (the collective transport), probe (log-probs of
fixed sequences, after a push), info, shutdown; nothing else is called. Each connection proves the key
(TULU_ENGINE_AUTHKEY) within a few seconds before anything of it is unpickled; a connection that does
not (a port scan, a wrong key, silence) is logged, closed, and the engine goes on serving. Every weight
update ends with a prefix-cache reset and a new weight version, which each generation reports.
"""

import argparse
import json
import os
import socket
import struct
import sys
import tempfile
import time
import traceback
from multiprocessing.connection import AuthenticationError, Connection, answer_challenge, deliver_challenge

OPS = ("generate", "begin", "load", "end", "load_dir", "collective_init", "collective_push", "probe",
       "info")  # and "shutdown"
HANDSHAKE_S = 10.0  # a connection proves the key within this, or is dropped


def has_transfer_api() -> bool:
    """vLLM's weight-transfer API (``vllm.distributed.weight_transfer``; tested: 0.32): the collective
    transport registers its receiver there; without it, the worker extension's own methods run it."""
    try:
        import vllm.distributed.weight_transfer  # noqa: F401
    except ImportError:
        return False
    return True


def engine_kwargs(args) -> dict:
    """vLLM's engine arguments, the same on every node of a multi-node engine."""
    kwargs = dict(model=args.model, skip_tokenizer_init=True, dtype=args.dtype, max_model_len=args.max_model_len,
                  tensor_parallel_size=args.tp, enforce_eager=args.enforce_eager, seed=args.seed,
                  worker_extension_cls="worker.TuluWeightSync", logprobs_mode="processed_logprobs")
    if not args.load_weights:
        kwargs["load_format"] = "dummy"
    if has_transfer_api():
        from worker import BACKEND  # the collective receiver's name in vLLM's registry

        kwargs["weight_transfer_config"] = {"backend": BACKEND}
    if args.gpu_memory_utilization is not None:
        kwargs["gpu_memory_utilization"] = args.gpu_memory_utilization
    if _on_cpu():
        # vLLM's CPU build fails a seeded request whose prompt is split over scheduler steps ("CPU Generator
        # does not use offset", vLLM 0.32): prompts go in whole
        kwargs["enable_chunked_prefill"] = False
    if args.nnodes > 1:  # vLLM's ParallelConfig: nnodes/node_rank/master_addr/master_port, "mp" backend only
        kwargs.update(distributed_executor_backend="mp", nnodes=args.nnodes, node_rank=args.node_rank,
                      master_addr=args.master_addr, master_port=args.master_port)
    return kwargs


def _on_cpu() -> bool:
    try:
        from vllm.platforms import current_platform
    except ImportError:
        return False
    return current_platform.is_cpu()


def build_llm(args):
    from vllm import LLM

    return LLM(**engine_kwargs(args))


def run_headless_workers(args) -> int:
    """Node rank > 0 of a multi-node engine: this node's vLLM workers (tp / nnodes of them), driven by
    node 0's engine through vLLM's message queues, as ``vllm serve --headless`` runs them. Returns when a
    worker dies (an exit code) or on SIGTERM (0)."""
    import signal

    from vllm import EngineArgs
    from vllm.usage.usage_lib import UsageContext
    from vllm.v1.executor.multiproc_executor import MultiprocExecutor

    stop = []

    def on_signal(signum, frame):
        if not stop:
            stop.append(signum)
            raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # node 0's LLM(...) config exactly (its defaults follow the usage context: the scheduler's batch size,
    # and with it the shapes of every collective, differ for a server's)
    engine_args = EngineArgs(**engine_kwargs(args), disable_log_stats=True)
    config = engine_args.create_engine_config(usage_context=UsageContext.LLM_CLASS, headless=True)
    executor = MultiprocExecutor(config, monitor_workers=False)
    print(f"[engine] node {args.node_rank} of {args.nnodes}: headless workers of "
          f"{args.master_addr}:{args.master_port}", flush=True)
    try:
        executor.start_worker_monitor(inline=True)  # returns when a worker dies
    finally:
        executor.shutdown()
    print("[engine] a worker died; exiting", flush=True)
    return 70


class Server:
    def __init__(self, llm, shm_dir=None):
        self.llm = llm
        self.version = -1  # no weights of the trainer's yet
        # weight chunks reach the workers through a file here (RAM-backed /dev/shm by default): the
        # RPC channel serialises large payloads slowly
        self.shm_dir = shm_dir
        self.transfer_api = has_transfer_api()

    def generate(self, prompts, n, max_new_tokens, temperature, seed, stop_token_ids):
        from vllm import SamplingParams

        params = [SamplingParams(n=n, temperature=temperature, max_tokens=max_new_tokens, logprobs=0,
                                 seed=seed * 1_000_003 + i, stop_token_ids=list(stop_token_ids), detokenize=False)
                  for i in range(len(prompts))]
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        results = []
        for out in outs:
            group = []
            for c in sorted(out.outputs, key=lambda c: c.index):
                ids = list(c.token_ids)
                logps = [lp[t].logprob for t, lp in zip(ids, c.logprobs)]
                group.append((ids, logps, c.finish_reason))
            results.append(group)
        return {"results": results, "version": self.version}

    def begin(self):
        self.llm.collective_rpc("tulu_begin")
        return {}

    def load(self, packed):
        if self.shm_dir is not None:
            try:
                return self._load_via_file(packed)
            except Exception as e:  # e.g. workers on another node cannot see this node's shared memory
                print(f"[engine] shared-memory hand-off failed ({e!r}); sending bytes through the RPC channel",
                      flush=True)
                self.shm_dir = None
        self.llm.collective_rpc("tulu_load", args=(packed,))
        return {"tensors": len(packed)}

    def _load_via_file(self, packed):
        fd, path = tempfile.mkstemp(dir=self.shm_dir, prefix="tulu-weights-")
        # the name goes at once: the workers open the file through this process's descriptor, and its
        # memory returns when the descriptor closes, however the engine ends (a kill mid-push included)
        os.unlink(path)
        meta, offset = [], 0
        with os.fdopen(fd, "wb") as f:
            for name, dtype, shape, data in packed:
                f.write(data)
                meta.append((name, dtype, list(shape), offset, len(data)))
                offset += len(data)
            f.flush()
            self.llm.collective_rpc("tulu_load_file", args=(f"/proc/{os.getpid()}/fd/{fd}", meta))
        return {"tensors": len(packed)}

    def end(self, version):
        self.llm.collective_rpc("tulu_end")
        self.llm.reset_prefix_cache()
        self.version = version
        return {"version": version}

    def load_dir(self, path, version):
        self.llm.collective_rpc("tulu_load_dir", args=(path,))
        self.llm.reset_prefix_cache()
        self.version = version
        return {"version": version}

    def collective_init(self, info):
        """Every worker joins the trainer's groups (the senders join theirs meanwhile)."""
        self.llm.collective_rpc("init_weight_transfer_engine" if self.transfer_api else "tulu_collective_init",
                                args=(info,))
        route = "vLLM's weight-transfer API" if self.transfer_api else "the worker extension"
        print(f"[engine] collective weight transport: {info['workers']} worker(s) joined {info['senders']} sender(s) "
              f"at {info['host']}:{info['port']} through {route}", flush=True)
        return {"transfer_api": self.transfer_api}

    def collective_push(self, version, verify, fault=None):
        """One whole update over the collective groups (the trainer's senders stream meanwhile): every
        worker's counts and the first checksum mismatch; the version moves only when none."""
        update = {"verify": verify, "fault": fault}
        rpc = self.llm.collective_rpc
        if self.transfer_api:
            rpc("start_weight_update")
            rpc("update_weights", args=(update,))
            rpc("finish_weight_update")
        else:
            rpc("tulu_begin")
            rpc("tulu_collective_receive", args=(update,))
            rpc("tulu_end")
        workers = rpc("tulu_collective_finish")
        self.llm.reset_prefix_cache()
        mismatch = next((w["mismatch"] for w in workers if w["mismatch"]), None)
        if mismatch is None:
            self.version = version
        return {"version": self.version, "workers": workers, "mismatch": mismatch}

    def probe(self, sequences):
        """Each token's log-prob given the ones before it (the first token has none), from the weights
        the engine holds: the trainer computes the same and compares."""
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        outs = self.llm.generate([{"prompt_token_ids": list(s)} for s in sequences], params, use_tqdm=False)
        return {"logprobs": [[lp[t].logprob for t, lp in zip(s[1:], out.prompt_logprobs[1:])]
                             for s, out in zip(sequences, outs)]}

    def info(self):
        import vllm

        return {"version": self.version, "pid": os.getpid(), "vllm": vllm.__version__,
                "transfer_api": self.transfer_api, "workers": self.llm.llm_engine.vllm_config.parallel_config.world_size}


def watch_engine_core(llm) -> None:
    """Exit when vLLM's engine core dies: a generate in flight would otherwise wait for it forever,
    and the trainer could not tell a dead engine from a slow one."""
    import threading

    def watch():
        while True:
            time.sleep(1.0)
            resources = getattr(getattr(llm.llm_engine, "engine_core", None), "resources", None)
            if resources is not None and getattr(resources, "engine_dead", False):
                print("[engine] vLLM's engine core died; exiting", flush=True)
                os._exit(70)

    threading.Thread(target=watch, daemon=True, name="engine-core-watch").start()


def _timeouts(sock: socket.socket, seconds: float) -> None:
    """Kernel send/receive timeouts on `sock` (0: none); they hold for the raw descriptor that
    multiprocessing's Connection reads."""
    value = struct.pack("ll", int(seconds), int((seconds % 1) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)


def accept(listener: socket.socket, key: bytes, handshake_s: float = HANDSHAKE_S):
    """The next connection that proves `key` within `handshake_s` (multiprocessing's challenge, both
    ways, as its Listener does), or None for one that does not."""
    sock, peer = listener.accept()
    try:
        _timeouts(sock, handshake_s)
        conn = Connection(sock.detach())
    except OSError:
        sock.close()
        return None
    try:
        deliver_challenge(conn, key)
        answer_challenge(conn, key)
        sock = socket.socket(fileno=os.dup(conn.fileno()))
        _timeouts(sock, 0)  # a trainer may stay silent for a whole training step
        sock.close()
        return conn
    except (AuthenticationError, OSError, EOFError, ValueError) as e:
        print(f"[engine] refused a connection from {peer[0]}:{peer[1]}: {type(e).__name__}: {e}", flush=True)
        conn.close()
        return None


def handle(server: Server, request) -> dict:
    if not isinstance(request, dict) or request.get("op") not in OPS:
        op = request.get("op") if isinstance(request, dict) else type(request).__name__
        return {"ok": False, "error": f"unknown request {op!r}: one of {', '.join(OPS)} or shutdown"}
    op = request.pop("op")
    try:
        return {"ok": True, **getattr(server, op)(**request)}
    except Exception:
        return {"ok": False, "error": traceback.format_exc()}


def serve(server: Server, listener: socket.socket, key: bytes, exit_with_client: bool,
          handshake_s: float = HANDSHAKE_S) -> None:
    """Requests from one authenticated connection at a time, until a shutdown request (or, with
    `exit_with_client`, until the first authenticated connection ends)."""
    while True:
        conn = accept(listener, key, handshake_s)
        if conn is None:
            continue
        with conn:
            while True:
                try:
                    request = conn.recv()
                except (EOFError, OSError):
                    break  # the trainer went away
                except Exception as e:  # an unreadable request: the connection ends, the engine serves on
                    print(f"[engine] dropped a connection: unreadable request ({type(e).__name__}: {e})", flush=True)
                    break
                if isinstance(request, dict) and request.get("op") == "shutdown":
                    conn.send({"ok": True})
                    return
                t0 = time.time()
                reply = handle(server, request)
                reply["seconds"] = time.time() - t0
                try:
                    conn.send(reply)
                except OSError:
                    break
        if exit_with_client:
            return


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="directory with the policy's config.json")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0: any free port (written to --ready-file)")
    p.add_argument("--ready-file", help="written (JSON: host, port, pid) once the engine accepts requests")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-model-len", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--gpu-memory-utilization", type=float, default=None)
    p.add_argument("--enforce-eager", action="store_true")
    p.add_argument("--load-weights", action="store_true", help="load --model's safetensors (default: dummy weights)")
    p.add_argument("--handoff-dir", default="/dev/shm",
                   help="where weight chunks wait for the workers (default /dev/shm; 'none': through the RPC channel)")
    p.add_argument("--exit-with-client", action="store_true",
                   help="exit when the trainer's connection closes (an engine the trainer started)")
    p.add_argument("--nnodes", type=int, default=1,
                   help="nodes the engine spans (vLLM's multiprocessing backend; --tp divisible by it)")
    p.add_argument("--node-rank", type=int, default=0,
                   help="this node's rank among --nnodes: 0 serves the trainer, others run headless workers")
    p.add_argument("--master-addr", help="with --nnodes > 1: node 0's address (torch.distributed of the engine)")
    p.add_argument("--master-port", type=int, default=29501, help="with --nnodes > 1: a free port on node 0")
    args = p.parse_args(argv)
    if args.nnodes > 1:
        if not 0 <= args.node_rank < args.nnodes or not args.master_addr or args.tp % args.nnodes:
            p.error(f"--nnodes {args.nnodes}: needs --node-rank in 0..{args.nnodes - 1}, --master-addr, and --tp "
                    f"divisible by --nnodes (got --node-rank {args.node_rank}, --master-addr {args.master_addr}, "
                    f"--tp {args.tp})")
        if args.node_rank > 0:
            sys.exit(run_headless_workers(args))
    elif args.node_rank != 0:
        p.error("--node-rank needs --nnodes > 1")
    key = os.environ.get("TULU_ENGINE_AUTHKEY")
    if not key:
        sys.exit("error: set TULU_ENGINE_AUTHKEY (hex) to the key the trainer uses")
    llm = build_llm(args)
    watch_engine_core(llm)
    listener = socket.create_server((args.host, args.port), backlog=16)
    host, port = listener.getsockname()[:2]
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"host": host, "port": port, "pid": os.getpid()}, f)
        os.replace(tmp, args.ready_file)
    print(f"[engine] serving on {host}:{port}", flush=True)
    # workers on other nodes cannot read this node's shared memory: the RPC channel reaches them all
    shm = args.handoff_dir if args.handoff_dir != "none" and args.nnodes == 1 else None
    serve(Server(llm, shm_dir=shm if shm and os.path.isdir(shm) else None), listener, bytes.fromhex(key),
          args.exit_with_client)
    print("[engine] shut down", flush=True)


if __name__ == "__main__":
    main()
