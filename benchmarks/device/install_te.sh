#!/usr/bin/env bash
# GPU-machine half of benchmarks/device/stage_te.sh: installs Transformer Engine from the wheels in
# ./.te (no network, no compiler) into $TE_SITE, then runs a smoke test of a few seconds.
#   bash benchmarks/device/install_te.sh     # prints the PYTHONPATH to use
#   source benchmarks/device/install_te.sh   # also exports it
# TE_SITE (default /tmp/te-site): install target. TE_DIR (default <repo>/.te): the staged wheels.
# TE_SMOKE=0 skips the smoke test.
_te_root=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
TE_SITE=${TE_SITE:-/tmp/te-site}
(
  set -euo pipefail
  te_dir=${TE_DIR:-$_te_root/.te}
  tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT

  # The core wheel travels in parts, one folder per transfer: .te/1, .te/2, ...
  core=$tmp/$(cat "$te_dir/0/CORE_NAME")
  n=1
  while [ -d "$te_dir/$n" ]; do cat "$te_dir/$n"/part_*; n=$((n + 1)); done > "$core"
  (cd "$tmp" && sha256sum -c --quiet "$te_dir/0/CORE_SHA256")

  # One pip call, so the wheels that share the transformer_engine/ folder are merged in it.
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target "$TE_SITE" \
    "$core" "$te_dir"/0/*.whl
  echo "installed Transformer Engine into $TE_SITE"

  [ "${TE_SMOKE:-1}" = 0 ] && exit 0
  PYTHONPATH="$TE_SITE${PYTHONPATH:+:$PYTHONPATH}" python3 - <<'EOF'
import sys, traceback, warnings
import torch  # first: it loads libnccl/libcublas from the nvidia-* wheels that libtransformer_engine needs
import transformer_engine.pytorch as te
from transformer_engine.common import recipe
from importlib.metadata import version

warnings.filterwarnings("ignore", category=DeprecationWarning)
print("transformer_engine", version("transformer-engine"), "torch", torch.__version__, torch.version.git_version[:12],
      torch.cuda.get_device_name())
torch.manual_seed(0)
layer = te.Linear(256, 256, params_dtype=torch.bfloat16).cuda()
x = torch.randn(64, 256, device="cuda", dtype=torch.bfloat16, requires_grad=True)
ref = None

def step(name, rec=None):
    global ref
    try:
        x.grad = None
        if rec is None:
            y = layer(x)
        else:
            with te.fp8_autocast(enabled=True, fp8_recipe=rec):
                y = layer(x)
        y.float().square().mean().backward()
        torch.cuda.synchronize()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all(), "non-finite output"
        ref = y.detach().float() if ref is None else ref
        err = ((y.float() - ref).norm() / ref.norm()).item()
        print(f"ok      {name} (rel. diff to bf16 {err:.3f})")
        return True
    except Exception:
        print(f"failed  {name}")
        traceback.print_exc()
        return False

checks = [step("bf16 Linear fwd+bwd"), step("fp8 DelayedScaling", recipe.DelayedScaling())]
if hasattr(recipe, "Float8CurrentScaling"):
    checks.append(step("fp8 Float8CurrentScaling", recipe.Float8CurrentScaling()))
sys.exit(0 if all(checks) else 1)
EOF
)
_te_rc=$?   # (not "( ... ) || ...": that would switch off set -e inside)
if [ "$_te_rc" -ne 0 ]; then echo "install_te.sh: failed" >&2; return "$_te_rc" 2>/dev/null || exit "$_te_rc"; fi

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
  export PYTHONPATH="$TE_SITE${PYTHONPATH:+:$PYTHONPATH}"
  echo "PYTHONPATH now starts with $TE_SITE"
else
  echo "use: export PYTHONPATH=$TE_SITE\${PYTHONPATH:+:\$PYTHONPATH}"
fi
