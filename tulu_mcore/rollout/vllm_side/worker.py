"""vLLM worker extension (``worker_extension_cls="worker.TuluWeightSync"``): its methods run in every vLLM
worker, reached with ``LLM.collective_rpc``. Runs in the vLLM environment: imports only torch and vllm.

A weight update is a session: ``tulu_begin`` prepares layer-wise reloading (which undoes and redoes the
kernels' repacking of weights: the CPU backend, FP8), ``tulu_load`` takes any chunk of HF-named full
tensors (each worker slices its own TP shard), ``tulu_end`` finishes the layers. Chunks may split a fused
module (q/k/v, gate/up) across calls. Tensors travel as (name, dtype, shape, bytes): collective_rpc's
channel rebuilds tensors only for typed fields.

The collective transport (:mod:`collective`) goes through vLLM's weight-transfer API where the engine's
vLLM has it (``vllm.distributed.weight_transfer``; tested: 0.32): :class:`TuluCollectiveEngine`,
registered as the ``tulu_collective`` backend and driven by the worker's own init/start/update/finish
methods. On a vLLM without that API the same receiver runs through this extension's ``tulu_collective_*``
methods (:func:`server.has_transfer_api` picks the route).
"""

import torch
from collective import Receiver, parse_fault

BACKEND = "tulu_collective"


def _device(owner) -> torch.device:
    """Where received weights land: the worker's (or transfer engine's) CUDA device, else the CPU."""
    device = getattr(owner, "device", None)
    return device if isinstance(device, torch.device) and device.type == "cuda" else torch.device("cpu")


def _overwrite(model, name: str) -> None:
    """The `overwrite:NAME` test hook: wrong values in an engine parameter after a load that passed its
    checksums (what the probe must catch)."""
    params = dict(model.named_parameters())
    if name not in params:
        raise ValueError(f"overwrite:{name}: no such engine parameter (some: {sorted(params)[:4]})")
    with torch.no_grad():
        params[name].copy_(torch.randn_like(params[name]))


def receive_into(receiver: Receiver, model, vllm_config, request: dict) -> dict:
    """One push: every sender's buckets loaded into `model`, checked, with the test hooks applied."""
    from vllm.config import set_current_vllm_config

    fault = parse_fault(request.get("fault"))

    def load(weights):
        with set_current_vllm_config(vllm_config):
            model.load_weights(weights=weights)

    stats = receiver.receive(load, verify=request["verify"], fault=fault)
    if fault is not None and fault[0] == "overwrite":
        stats["after_load"] = fault
    return stats


def unpack(packed):
    return [(name, torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype)).view(*shape))
            for name, dtype, shape, data in packed]


class TuluWeightSync:
    def tulu_collective_init(self, info):
        self.tulu_receiver = Receiver(info, self.rank, _device(self))

    def tulu_collective_receive(self, request):
        self.tulu_stats = receive_into(self.tulu_receiver, self.model_runner.model, self.vllm_config, request)

    def tulu_collective_finish(self):
        """After the update's end (the layers finished): apply an `overwrite` hook; the receive's
        counts, on every worker."""
        stats = getattr(self, "tulu_stats", None)
        if stats is None:  # the weight-transfer API's route keeps them on the engine
            stats = self.weight_transfer_engine.stats
        if stats.get("after_load"):
            _overwrite(self.model_runner.model, stats.pop("after_load")[1])
        return stats

    def tulu_begin(self):
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            initialize_layerwise_reload(self.model_runner.model)

    def tulu_load(self, packed):
        from vllm.config import set_current_vllm_config

        with set_current_vllm_config(self.vllm_config):
            return len(self.model_runner.model.load_weights(weights=unpack(packed)))

    def tulu_load_file(self, path, meta):
        """A chunk whose bytes the server left in a file (shared memory): only names and offsets travel
        through the RPC channel, which is slow for large payloads."""
        from vllm.config import set_current_vllm_config

        total = max((off + n for _, _, _, off, n in meta), default=0)
        raw = torch.from_file(path, shared=False, size=total, dtype=torch.uint8)
        weights = [(name, raw[off:off + n].view(getattr(torch, dtype)).view(*shape))
                   for name, dtype, shape, off, n in meta]
        with set_current_vllm_config(self.vllm_config):
            return len(self.model_runner.model.load_weights(weights=weights))

    def tulu_load_dir(self, path):
        """A whole update from the safetensors files of `path` (the disk transport), read here: the
        engine's own loader would use its start-up load format (dummy weights)."""
        import glob
        import os

        from safetensors import safe_open
        from vllm.config import set_current_vllm_config

        self.tulu_begin()
        n = 0
        with set_current_vllm_config(self.vllm_config):
            for f in sorted(glob.glob(os.path.join(path, "*.safetensors"))):
                with safe_open(f, framework="pt") as st:
                    n += len(self.model_runner.model.load_weights(weights=((k, st.get_tensor(k)) for k in st.keys())))
        self.tulu_end()
        return n

    def tulu_end(self):
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

        with set_current_vllm_config(self.vllm_config):
            finalize_layerwise_reload(self.model_runner.model, self.vllm_config.model_config)


try:  # vLLM's weight-transfer API; a vLLM without it: the tulu_collective_* methods above
    from vllm.distributed.weight_transfer import WeightTransferEngine, WeightTransferEngineFactory
except ImportError:
    WeightTransferEngine = None

if WeightTransferEngine is not None:
    from dataclasses import dataclass

    @dataclass
    class CollectiveInit:
        host: str
        port: int
        prefix: str
        senders: int
        workers: int
        timeout_s: float

    @dataclass
    class CollectiveUpdate:
        verify: bool = True
        fault: str | None = None

    class TuluCollectiveEngine(WeightTransferEngine):
        """The collective receiver as a vLLM weight-transfer backend: the worker's
        init_weight_transfer_engine / start_weight_update / update_weights / finish_weight_update drive it."""

        init_info_cls = CollectiveInit
        update_info_cls = CollectiveUpdate

        def init_transfer_engine(self, init_info):
            from vllm.distributed import get_world_group

            self.receiver = Receiver(vars(init_info), get_world_group().rank, _device(self))
            self.stats = {}

        def start_weight_update(self):
            from vllm.model_executor.model_loader.reload import initialize_layerwise_reload

            initialize_layerwise_reload(self.model)

        def update_weights(self, update_info):
            # the base class ends with torch.accelerator.synchronize(), which fails on a CPU-only machine
            self.receive_weights(self.parse_update_info(update_info))
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)

        def receive_weights(self, update_info):
            self.stats = receive_into(self.receiver, self.model, self.vllm_config,
                                      {"verify": update_info.verify, "fault": update_info.fault})

        def finish_weight_update(self):
            from vllm.model_executor.model_loader.reload import finalize_layerwise_reload

            finalize_layerwise_reload(self.model, self.model_config)

        def shutdown(self):
            self.receiver = None

    try:
        WeightTransferEngineFactory.register_engine(BACKEND, TuluCollectiveEngine)
    except ValueError:  # registered already (this module imported twice)
        pass
