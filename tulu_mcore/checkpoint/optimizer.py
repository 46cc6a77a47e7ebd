"""Saving and restoring megatron-core's optimizers when neither Apex nor Transformer Engine is present
(torch AdamW inside): the workarounds megatron-core 0.19.2 needs on that path, in one place.

* A torch optimizer has no state before its first step, but building the *loading* sharded state
  dict reads it (and the distributed optimizer asserts a per-parameter ``step``): allocate it first.
* The distributed optimizer's loader copies every tensor of the inner state, ``step`` included, which
  the reshardable formats do not carry (KeyError), and copies into fp32 main parameters that are
  views of leaves requiring grad (in-place error outside no_grad).
* It then gives every parameter one shared ``step`` tensor; torch AdamW increments it once per
  parameter per step, which breaks bias correction after a resume: un-share it.

The restored ``step`` values come from the checkpoint's param groups.
"""

from __future__ import annotations

import torch

SHARDING = {"distrib_optim_sharding_type": "fully_reshardable"}  # loads at any TP/PP/DP


def _inner_optimizers(optimizer):
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        yield opt


def _torch_path() -> bool:
    from megatron.core.optimizer import distrib_optimizer

    return not distrib_optimizer.HAVE_APEX_OR_TE


def allocate_state(optimizer) -> None:
    """Zero Adam state (and step 0) for every parameter that has none yet."""
    if not _torch_path():
        return
    for opt in _inner_optimizers(optimizer):
        inner = opt.optimizer
        for group in inner.param_groups:
            for p in group["params"]:
                st = inner.state[p]
                if not st:
                    st["step"] = torch.tensor(0.0)
                    st["exp_avg"] = torch.zeros_like(p)
                    st["exp_avg_sq"] = torch.zeros_like(p)


def patch_loader() -> None:
    """Install the loader fix on DistributedOptimizer (once)."""
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    if getattr(DistributedOptimizer, "_tulu_patched", False) or not _torch_path():
        return
    original = DistributedOptimizer._set_main_param_and_optimizer_states

    def set_states(self, model_param, tensors):
        gi, go = self.model_param_group_index_map[model_param]
        st = self.optimizer.state[self.optimizer.param_groups[gi]["params"][go]]
        if "step" in st:  # never take 'step' from the per-parameter payload
            tensors = dict(tensors, step=None)
        with torch.no_grad():
            return original(self, model_param, tensors)

    DistributedOptimizer._set_main_param_and_optimizer_states = set_states
    DistributedOptimizer._tulu_patched = True


def unshare_steps(optimizer) -> None:
    if not _torch_path():
        return
    for opt in _inner_optimizers(optimizer):
        for st in opt.optimizer.state.values():
            if torch.is_tensor(st.get("step")):
                st["step"] = st["step"].clone()


def follow_current_settings(optimizer, state: dict | list) -> None:
    """A resume keeps the current run's settings where the saved param groups would otherwise win:
    * the learning-rate bounds (optim.lr, optim.min_lr): megatron pairs saved and current groups by a
      tuple of per-group settings that includes ``max_lr`` and ``min_lr`` (a KeyError when they changed),
      so the new schedule applies from the resumed step;
    * how torch's AdamW steps (optim.impl: ``fused`` / ``foreach`` / ``capturable``): torch's
      ``load_state_dict`` adopts the saved groups' flags and places each ``step`` by them (on the
      parameter's device for fused), so a run saved fused would resume fused whatever it asks.
    The saved groups take the current groups' values (matched on the rest of the tuple); the Adam states
    are untouched."""
    from megatron.core.optimizer.optimizer import param_group_identifier_keys

    lr_keys = ("max_lr", "min_lr")
    impl_keys = ("fused", "foreach", "capturable")  # torch AdamW's; absent from TE's / Apex's FusedAdam
    rest = [k for k in param_group_identifier_keys if k not in lr_keys]

    def key(group: dict) -> tuple:
        return tuple(group.get(k, group.get(f"pre_{k}")) for k in rest)

    current = {key(g): {**{k: g.get(k) for k in lr_keys}, **{k: g[k] for k in impl_keys if k in g}}
               for g in optimizer.param_groups}
    for sd in state if isinstance(state, list) else [state]:
        inner = sd.get("optimizer", sd) if isinstance(sd, dict) else {}
        for group in inner.get("param_groups", []) if isinstance(inner, dict) else []:
            if key(group) in current:
                group.update(current[key(group)])
