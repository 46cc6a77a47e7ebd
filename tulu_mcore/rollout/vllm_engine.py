"""The ``vllm`` rollout engine: a vLLM process outside the trainer (its own Python environment, no Ray),
driven from global rank 0 over a socket (:mod:`tulu_mcore.rollout.vllm_side.server`).

Weight sync (``rlvr.vllm.transport``): every trainer rank walks the shared weight export (HF-named full
tensors, TP-gathered, :func:`tulu_mcore.convert.export.export_hf_weights`), and

* ``collective`` (default): each pipeline stage broadcasts its own buckets to every engine worker over
  torch.distributed groups that span trainer and engine (gloo on CPUs, NCCL on GPUs;
  :mod:`tulu_mcore.rollout.collective`), each tensor with a checksum the workers check;
* ``memory``: rank 0 sends each bucket over the socket (a shared-memory file to the workers);
* ``disk``: rank 0 writes safetensors under ``run.dir/engine`` and the engine reloads them.

An update ends with a prefix-cache reset and a new weight version; it is queued behind any generation
in progress, so it never lands in the middle of one. A verified push (every ``rlvr.vllm.verify_every``-th)
also has the engine score fixed probe sequences that the trainer scores too: a gap over
``rlvr.vllm.probe_tol`` stops the run, as does a checksum mismatch (naming the tensor).

Any failure of the engine (exit, hang, refused request, a broken transfer) becomes an
:class:`EngineError` on every rank, naming the engine's log and the checkpoint a rerun resumes from.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import signal
import subprocess
import time
from multiprocessing.connection import Client
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from tulu_mcore.errors import ConfigError, EngineError
from tulu_mcore.launch.engine import ENGINE_DIR, engine_env, server_command, write_engine_config
from tulu_mcore.rollout import Rollout


def _python(opts) -> str:
    py = opts.python or os.environ.get("TULU_VLLM_PYTHON")
    if not py:
        raise ConfigError("rlvr.engine=vllm: name the vLLM environment's interpreter with rlvr.vllm.python=PATH "
                          "or TULU_VLLM_PYTHON (vLLM lives in its own environment; scripts/vllm-env.sh builds "
                          "the CPU one), or connect to a running engine with rlvr.vllm.address=HOST:PORT")
    if not Path(py).is_file():
        raise ConfigError(f"rlvr.vllm.python={py}: no such interpreter")
    return py


def settle(error: str | None, value: int = 0) -> int:
    """Collective: the first rank's error (rank 0's when it has one: the rank that speaks to the engine)
    raised on every rank, so that none waits for the others forever; else the sum of every rank's `value`."""
    pairs = [None] * dist.get_world_size()
    dist.all_gather_object(pairs, (error, value))
    errors = [e for e, _ in pairs if e is not None]
    if errors:
        raise EngineError(errors[0])
    return sum(v for _, v in pairs)


PROBE_SEQUENCES, PROBE_LENGTH, PROBE_SEED = 4, 32, 20261207


def probe_tokens(vocab_size: int) -> np.ndarray:
    """The fixed sequences a verified push is scored on (random tokens: every weight shows in them)."""
    return np.random.default_rng(PROBE_SEED).integers(0, vocab_size, (PROBE_SEQUENCES, PROBE_LENGTH))


def trainer_probe(chunks, tokens: np.ndarray) -> np.ndarray | None:
    """The trainer's log-prob of each probe token after the first, on global rank 0 (a collective);
    the chunks keep their train/eval mode."""
    from tulu_mcore.models.logits import full_logits

    modes = [c.training for c in chunks]
    ids = torch.as_tensor(tokens, dtype=torch.long)
    with torch.no_grad():
        logits = full_logits(chunks, ids)
    for c, mode in zip(chunks, modes):
        c.train(mode)
    if logits is None:
        return None
    logps = torch.log_softmax(logits[:, :-1].float().cpu(), dim=-1)
    return logps.gather(-1, ids[:, 1:, None]).squeeze(-1).double().numpy()


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes()


class VllmEngine:
    in_process = False

    def __init__(self, conn, *, proc=None, log: Path | None = None, eos_id: int, opts, run_dir: Path, ckpts,
                 dtype: torch.dtype):
        self.conn, self.proc, self.log, self.eos_id = conn, proc, log, eos_id
        self.opts, self.run_dir, self.ckpts, self.dtype = opts, run_dir, ckpts, dtype
        self.weight_version = -1
        self.pushes = 0  # pushes so far (a verified push every rlvr.vllm.verify_every)
        self.push_stats: dict = {}  # the last push's metrics beside its bytes and seconds
        self.sender = None  # the collective transport's end on this rank, set up by the first push
        self.pending = False  # a submitted generation whose reply is not read yet
        self.ready = None  # its reply, read early because a weight update came after it
        self.keys = "rlvr.vllm"  # the config section its settings come from, for messages
        self.hint: str | None = None  # what a rerun does, when not resuming a run's checkpoint

    # ------------------------------------------------------------------------------ start-up
    @classmethod
    def start(cls, cfg, chunks, *, arch, eos_id: int, run_dir: Path, ckpts=None, version: int = 0,
              log=print) -> "VllmEngine":
        """Rank 0 starts (or connects to) the engine; then every rank takes part in the first push
        (the policy's current weights, as `version`)."""
        common = dict(eos_id=eos_id, opts=cfg.rlvr.vllm, run_dir=Path(run_dir), ckpts=ckpts)
        engine, error = None, None
        if dist.get_rank() == 0:
            try:
                engine = cls._connect(cfg, arch, log, **common)
            except EngineError as e:
                error = str(e)
        settle(error)
        if engine is None:  # ranks other than 0 hold no connection; they take part in pushes
            engine = cls(None, dtype=torch.float32, **common)
        engine.push_weights(chunks, arch, version=version)
        return engine

    @classmethod
    def _connect(cls, cfg, arch, log, **common) -> "VllmEngine":
        from tulu_mcore.dtypes import TORCH_DTYPES

        opts = cfg.rlvr.vllm
        dtype = TORCH_DTYPES[cfg.precision.params_dtype]
        if opts.address:
            host, _, port = opts.address.rpartition(":")
            key = os.environ.get("TULU_ENGINE_AUTHKEY")
            if not key:
                raise EngineError("rlvr.vllm.address: set TULU_ENGINE_AUTHKEY to the engine's key (hex)")
            t0 = time.time()
            while True:  # an engine started beside the trainers (its own srun step) may still be loading
                try:
                    conn = Client((host, int(port)), authkey=bytes.fromhex(key))
                    break
                except OSError as e:
                    if time.time() - t0 > opts.startup_timeout_s:
                        raise EngineError(f"rlvr.vllm.address={opts.address}: no engine answered within "
                                          f"rlvr.vllm.startup_timeout_s={opts.startup_timeout_s} ({e})") from None
                    time.sleep(2)
            log(f"connected to the vLLM engine at {opts.address}")
            return cls(conn, dtype=dtype, **common)
        python = _python(opts)
        model_dir = write_engine_config(common["run_dir"], arch, dtype)
        cmd = server_command(python, model_dir, cfg, "--exit-with-client")
        return cls._spawn(python, cmd, common["run_dir"] / ENGINE_DIR, log, dtype=dtype, **common)

    @classmethod
    def serve(cls, cfg, hf_dir: Path, *, eos_id: int, work_dir: Path, log=print, keys: str = "rlvr.vllm",
              hint: str | None = None) -> "VllmEngine":
        """An engine on this machine serving the weights of the HF directory `hf_dir` as they are (data
        synthesis: no trainer, no pushes); its log and ready file in `work_dir`. `keys`: the config section
        its messages name; `hint`: what a rerun does, for its error messages."""
        from tulu_mcore.dtypes import TORCH_DTYPES

        opts = cfg.rlvr.vllm
        python = _python(opts)
        cmd = server_command(python, Path(hf_dir), cfg, "--exit-with-client", "--load-weights")
        return cls._spawn(python, cmd, Path(work_dir), log, dtype=TORCH_DTYPES[cfg.precision.params_dtype],
                          eos_id=eos_id, opts=opts, run_dir=Path(work_dir), ckpts=None, keys=keys, hint=hint)

    @classmethod
    def _spawn(cls, python: str, cmd: list[str], where: Path, log, keys: str = "rlvr.vllm", hint: str | None = None,
               **common) -> "VllmEngine":
        """Start the engine server `cmd` (its log and ready file in `where`) and connect to it."""
        opts = common["opts"]
        where.mkdir(parents=True, exist_ok=True)
        ready, log_file = where / "ready.json", where / "vllm.log"
        ready.unlink(missing_ok=True)
        key = secrets.token_hex(16)
        env = engine_env(python, key, devices=opts.devices, extra=opts.env)
        cmd = [*cmd, "--ready-file", str(ready)]
        t0 = time.time()
        log(f"starting the vLLM engine ({python}); its log: {log_file}")
        with open(log_file, "ab") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        engine = cls(None, proc=proc, log=log_file, **common)
        engine.keys, engine.hint = keys, hint
        atexit.register(engine._stop_process)  # never leave an engine behind, whatever ends the trainer
        while not ready.is_file():
            if proc.poll() is not None:
                raise engine._fail("exited during start-up")
            if time.time() - t0 > opts.startup_timeout_s:
                raise engine._fail(f"did not start within {keys}.startup_timeout_s={opts.startup_timeout_s}")
            time.sleep(0.5)
        info = json.loads(ready.read_text())
        engine.conn = Client((info["host"], info["port"]), authkey=bytes.fromhex(key))
        log(f"vLLM engine up in {time.time() - t0:.0f}s (pid {proc.pid})")
        return engine

    # ------------------------------------------------------------------------------ requests
    def _death_message(self, what: str) -> str:
        lines = [f"the vLLM engine {what}"]
        if self.proc is not None and self.proc.poll() is not None:
            lines[0] += f" (pid {self.proc.pid}, exit code {self.proc.returncode})"
        if self.log is not None and self.log.is_file():
            tail = self.log.read_text(errors="replace").splitlines()[-15:]
            lines.append(f"last lines of {self.log}:")
            lines += ["  " + t for t in tail]
        return "\n".join(lines + [self._resume_hint()])

    def _resume_hint(self) -> str:
        if self.hint:
            return self.hint
        latest = self.ckpts.latest() if self.ckpts is not None else None
        return (f"the last checkpoint, {latest}, is intact: rerun the same command to resume from it"
                if latest else "no checkpoint was written yet: rerun the same command to start again")

    def _stop_process(self, grace: float = 10.0) -> None:
        """Stop the engine this trainer started, with vLLM's own processes (its process group)."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                self.proc.wait(timeout=wait)
                if sig == signal.SIGTERM:
                    try:
                        os.killpg(self.proc.pid, signal.SIGKILL)  # children left behind by the server
                    except (ProcessLookupError, PermissionError):
                        pass
                break
            except subprocess.TimeoutExpired:
                continue

    def _fail(self, what: str) -> EngineError:
        message = self._death_message(what)
        self._stop_process()
        return EngineError(message)

    def _send(self, op: str, **payload) -> None:
        try:
            self.conn.send({"op": op, **payload})
        except (OSError, EOFError):
            raise self._fail("connection broke") from None

    def _reply(self) -> dict:
        deadline = time.time() + self.opts.timeout_s
        while True:
            try:
                if self.conn.poll(1.0):
                    reply = self.conn.recv()
                    break
            except (OSError, EOFError):
                raise self._fail("closed the connection (it died?)") from None
            if self.proc is not None and self.proc.poll() is not None:
                raise self._fail("exited")
            if time.time() > deadline:
                raise self._fail(f"sent no reply within {self.keys}.timeout_s={self.opts.timeout_s}")
        if not reply["ok"]:
            raise self._fail("refused a request:\n" + reply["error"])
        return reply

    def _call(self, op: str, **payload) -> dict:
        self._drain()
        self._send(op, **payload)
        return self._reply()

    def _drain(self) -> None:
        """Read the reply of a submitted generation that is still in flight (requests answer in order)."""
        if self.pending:
            self.ready = self._reply()
            self.pending = False

    # ------------------------------------------------------------------------------ generation
    def submit(self, prompts: list[np.ndarray], *, n: int, max_new_tokens: int, temperature: float, seed: int) -> None:
        self._drain()
        self._prompts = [np.asarray(p) for p in prompts]
        self._send("generate", prompts=[p.tolist() for p in self._prompts], n=n, max_new_tokens=max_new_tokens,
                   temperature=temperature, seed=seed, stop_token_ids=[self.eos_id])
        self.pending = True

    def collect(self) -> list[list[Rollout]]:
        self._drain()
        reply, self.ready = self.ready, None
        if reply is None:
            raise EngineError(self._death_message("has no generation in flight (a request failed)"))
        version = reply["version"]
        return [[Rollout(prompt=p, response=np.asarray(ids, dtype=np.int64), logprobs=np.asarray(lps, dtype=np.float64),
                         finished=reason == "stop", weight_version=version) for ids, lps, reason in group]
                for p, group in zip(self._prompts, reply["results"])]

    def generate(self, prompts, *, n: int, max_new_tokens: int, temperature: float = 1.0, seed: int = 0):
        self.submit(prompts, n=n, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed)
        return self.collect()

    # ------------------------------------------------------------------------------ weights
    def push_weights(self, chunks, arch, version: int | None = None) -> int:
        """Collective over the trainer's ranks; returns the bytes sent (rank 0: all of them). A verified
        push (every rlvr.vllm.verify_every-th, the first included) is checked by checksums (collective)
        and the probe; its seconds are in push_stats["weight_verify_s"]."""
        version = self.weight_version + 1 if version is None else version
        every = self.opts.verify_every
        verify = every > 0 and self.pushes % every == 0
        self.push_stats = {}
        if self.opts.transport == "collective":
            sent = self._push_collective(chunks, arch, version, verify)
        else:
            sent = self._push_rank0(chunks, arch, version)
        if verify:
            t0 = time.time()
            self._probe(chunks, arch, version)
            self.push_stats["weight_verify_s"] = self.push_stats.get("weight_verify_s", 0.0) + time.time() - t0
        self.pushes += 1
        self.weight_version = version
        return sent

    def _push_collective(self, chunks, arch, version: int, verify: bool) -> int:
        from tulu_mcore.convert.export import export_hf_weights
        from tulu_mcore.rollout.vllm_side.collective import fault_for_push

        rank0 = self.conn is not None
        if self.sender is None:
            self.sender = self._join(chunks)
        fault = fault_for_push(os.environ.get("TULU_WEIGHT_SYNC_FAULT"), self.pushes)  # test hooks
        error, reply, sent, checksum_s = None, None, 0, 0.0
        if rank0:
            try:
                self._drain()
                self._send("collective_push", version=version, verify=verify, fault=fault)
            except EngineError as e:
                error = str(e)
        buckets = export_hf_weights(chunks, arch, bucket_bytes=self.opts.bucket_mb << 20, per_stage=True)
        try:
            sent, checksum_s = self.sender.send(buckets, verify=verify, fault=fault)
        except ConnectionError as e:
            error = error or f"weight push {version}: {e}\n{self._resume_hint()}"
        if rank0:
            try:
                reply = self._reply()  # the engine's own account comes first: it names a dead worker's log
                if reply["mismatch"] is not None:
                    error = self._mismatch(version, reply["mismatch"])
                elif error is None:
                    error = self._incomplete(version, reply["workers"], arch)
            except EngineError as e:
                error = str(e)
        total = settle(error, sent)
        if reply is not None:
            self.push_stats["weight_push_workers"] = len(reply["workers"])
            if verify:
                self.push_stats["weight_verify_s"] = checksum_s + max(w["verify_s"] for w in reply["workers"])
        return total

    def _incomplete(self, version: int, workers: list[dict], arch) -> str | None:
        """An error when some engine worker did not receive the whole model (every worker takes every
        tensor and keeps its own shard of it)."""
        from tulu_mcore.models.llama.mapping import hf_shapes

        want = len(hf_shapes(arch))
        if all(w["tensors"] == want for w in workers):
            return None
        return (f"weight push {version}: not every vLLM engine worker received the model's {want} tensors "
                f"(per worker: {[w['tensors'] for w in workers]}): the run stops.\n{self._resume_hint()}")

    def _join(self, chunks):
        """Every rank: the collective groups between the trainer's senders and the engine's workers."""
        from tulu_mcore.rollout.collective import CollectiveSender, trainer_host

        rank0 = self.conn is not None
        device = next(chunks[0].parameters()).device
        host, workers, error = None, None, None
        if rank0:
            try:
                workers = self._call("info")["workers"]
                host = trainer_host(self.opts.address, self.opts.collective_host)
            except EngineError as e:
                error = str(e)
        settle(error)

        def request_join(info):
            self._send("collective_init", info=info)
            return self._reply

        try:
            sender = CollectiveSender.connect(request_join if rank0 else None, host=host, workers=workers,
                                              timeout_s=self.opts.timeout_s, device=device)
        except EngineError as e:
            sender, error = None, str(e)
        except Exception as e:  # the groups could not form
            sender, error = None, (f"the collective weight transport could not connect trainer and engine "
                                   f"({type(e).__name__}: {e}); check rlvr.vllm.collective_host, or use "
                                   f"rlvr.vllm.transport=memory")
        settle(error)
        return sender

    def _mismatch(self, version: int, m: dict) -> str:
        return (f"weight push {version}: tensor {m['tensor']} arrived corrupted in the vLLM engine (checksum of "
                f"the bytes sent {m['expected']}, of the bytes received {m['received']}; sent by pipeline stage "
                f"{m['sender']}). The engine's weights are not the trainer's: the run stops.\n{self._resume_hint()}")

    def _probe(self, chunks, arch, version: int) -> None:
        """Collective: the engine's and the trainer's log-probs of the probe sequences; an error on every
        rank when their mean gap exceeds rlvr.vllm.probe_tol."""
        tokens = probe_tokens(arch.vocab_size)
        error, engine_lp = None, None
        if self.conn is not None:
            try:
                engine_lp = np.asarray(self._call("probe", sequences=tokens.tolist())["logprobs"], dtype=np.float64)
            except EngineError as e:
                error = str(e)
        mine = trainer_probe(chunks, tokens)
        if engine_lp is not None and mine is not None:
            gap = np.abs(engine_lp - mine)
            self.push_stats["weight_probe_gap"] = float(gap.mean())
            tol = self.opts.probe_tol if self.opts.probe_tol is not None else (1e-2 if self.dtype == torch.float32
                                                                              else 1e-1)
            if gap.mean() > tol:
                worst = np.unravel_index(gap.argmax(), gap.shape)
                why = ("Every tensor arrived as sent (checksums), so the engine holds wrong weights after loading "
                       "them (a loader or layout mismatch, or memory corruption)"
                       if self.opts.transport == "collective" else
                       f"The engine holds weights other than the trainer's (rlvr.vllm.transport="
                       f"{self.opts.transport} has no checksums to tell a damaged transfer from a wrong load)")
                error = (f"weight push {version}: the vLLM engine's log-probs of the probe sequences are not the "
                         f"trainer's (mean |Δ| {gap.mean():.4g} > rlvr.vllm.probe_tol={tol:g}; largest "
                         f"{gap.max():.4g} at sequence {worst[0]}, token {worst[1] + 1}). {why}: the run stops."
                         f"\n{self._resume_hint()}")
        settle(error)

    def _push_rank0(self, chunks, arch, version: int) -> int:
        """The memory and disk transports: everything through rank 0."""
        from tulu_mcore.convert.export import export_hf_weights

        bucket_bytes = self.opts.bucket_mb << 20
        sent, error = 0, None
        rank0 = self.conn is not None
        disk = self.opts.transport == "disk"
        out_dir = self.run_dir / ENGINE_DIR / "weights"
        try:
            if rank0 and not disk:
                self._call("begin")
            for i, bucket in enumerate(export_hf_weights(chunks, arch, bucket_bytes=bucket_bytes)):
                if not rank0 or error is not None:
                    continue  # keep walking the export: it is collective
                try:
                    if disk:
                        self._write_bucket(out_dir, i, bucket)
                    else:
                        packed = [(n, str(t.dtype).removeprefix("torch."), list(t.shape), _tensor_bytes(t))
                                  for n, t in bucket]
                        self._call("load", packed=packed)
                    sent += sum(t.numel() * t.element_size() for _, t in bucket)
                except EngineError as e:
                    error = str(e)
            if rank0 and error is None:
                if disk:
                    self._call("load_dir", path=str(self._publish(out_dir)), version=version)
                else:
                    self._call("end", version=version)
        except EngineError as e:
            error = str(e)
        settle(error)
        return sent

    def _write_bucket(self, out_dir: Path, i: int, bucket) -> None:
        from safetensors.torch import save_file

        tmp = out_dir.with_name(out_dir.name + ".partial")
        if i == 0:
            import shutil

            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        save_file({n: t.contiguous().cpu() for n, t in bucket}, str(tmp / f"model-{i:05d}.safetensors"))

    @staticmethod
    def _publish(out_dir: Path) -> Path:
        import shutil

        shutil.rmtree(out_dir, ignore_errors=True)
        out_dir.with_name(out_dir.name + ".partial").rename(out_dir)
        return out_dir

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()
            self.sender = None
        if self.conn is None:
            return
        try:
            if self.proc is not None and self.proc.poll() is None:
                self._drain()
                self._send("shutdown")
                self._reply()
        except EngineError:
            pass
        finally:
            self.conn.close()
            self.conn = None
            self._stop_process(grace=60.0)
