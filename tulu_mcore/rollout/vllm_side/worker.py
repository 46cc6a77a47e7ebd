"""vLLM worker extension (``worker_extension_cls="worker.TuluWeightSync"``): its methods run in every vLLM
worker, reached with ``LLM.collective_rpc``. Runs in the vLLM environment: imports only torch and vllm.

A weight update is a session: ``tulu_begin`` prepares layer-wise reloading (which undoes and redoes the
kernels' repacking of weights: the CPU backend, FP8), ``tulu_load`` takes any chunk of HF-named full
tensors (each worker slices its own TP shard), ``tulu_end`` finishes the layers. Chunks may split a fused
module (q/k/v, gate/up) across calls. Tensors travel as (name, dtype, shape, bytes): collective_rpc's
channel rebuilds tensors only for typed fields.
"""

import torch


def unpack(packed):
    return [(name, torch.frombuffer(bytearray(data), dtype=getattr(torch, dtype)).view(*shape))
            for name, dtype, shape, data in packed]


class TuluWeightSync:
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
