"""RMSNorm for the local (non-TE) spec.

megatron-core's ``WrappedTorchNorm`` refuses sequence parallelism, and HybridStack builds its final norm
with TE's ``TENorm`` directly. This norm does both jobs: it computes in fp32 exactly like Hugging Face's
``LlamaRMSNorm`` (so bf16 runs match the reference as closely as the dtype allows) and, under sequence
parallelism, marks its weight so that ``finalize_model_grads`` all-reduces the gradient over TP.
On GPUs the chain of element-wise kernels is compiled into one (tulu_mcore.models.kernels).
"""

import torch

from tulu_mcore.models import kernels


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    dtype = x.dtype
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return weight * x32.to(dtype)


class RMSNorm(torch.nn.Module):
    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **_):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        # Under SP each rank sees a slice of the sequence: the weight gradient is partial.
        self.weight.sequence_parallel = bool(config.sequence_parallel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return kernels.pick(rms_norm, x)(x, self.weight, self.eps)
