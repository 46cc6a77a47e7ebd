"""A reward model's scalar head: ``score(h) = w·h`` at every position, in place of the output layer.

The weight is [1, hidden] and whole on every TP rank (HF ``LlamaForSequenceClassification.score``,
``num_labels=1``). Under sequence parallelism the hidden states arrive split along the sequence and are
gathered first; every TP rank then computes the same scores and the same loss, so the backward only
takes this rank's slice of the gradient (no reduction) and the weight's gradient is already whole.
"""

from __future__ import annotations

import torch

SCORE_INIT_SEED = 4242


class ScoreHead(torch.nn.Module):
    def __init__(self, hidden_size: int, *, dtype: torch.dtype, device, sequence_parallel: bool):
        super().__init__()
        self.sequence_parallel = sequence_parallel
        # Always drawn (a [1, h] draw costs nothing): a reward model started from a language model
        # loads every weight but this one. open-instruct's RM head init, std 1/sqrt(h+1); one seeded
        # draw, identical at any layout.
        w = torch.empty(1, hidden_size, dtype=torch.float32)
        w.normal_(0.0, (hidden_size + 1) ** -0.5, generator=torch.Generator().manual_seed(SCORE_INIT_SEED))
        self.weight = torch.nn.Parameter(w.to(dtype=dtype, device=device))

    def forward(self, hidden: torch.Tensor, weight=None, runtime_gather_output=None):
        """[s, b, h] -> ([s, b, 1], None), the output layer's calling convention."""
        if self.sequence_parallel:
            from megatron.core.tensor_parallel.mappings import gather_from_sequence_parallel_region

            hidden = gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        return torch.nn.functional.linear(hidden, self.weight), None


def attach_score_head(model) -> None:
    """Replace `model`'s output layer (on the last pipeline stage) by a ScoreHead."""
    if not model.post_process:
        return
    cfg = model.config
    old = model.output_layer
    device = old.weight.device if getattr(old, "weight", None) is not None else "cpu"
    model.output_layer = ScoreHead(cfg.hidden_size, dtype=cfg.params_dtype, device=device,
                                   sequence_parallel=cfg.sequence_parallel)


def head_of(model) -> str:
    """"score" when the (unwrapped) chunk carries a ScoreHead, else "lm"."""
    return "score" if isinstance(getattr(model, "output_layer", None), ScoreHead) else "lm"
