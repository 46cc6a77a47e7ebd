#!/usr/bin/env bash
# Stages Transformer Engine for a GPU machine that has no network and no time to compile.
#
# The PyTorch extension (transformer_engine_torch) ships only as a source archive of C++ files
# (no CUDA sources), so it is compiled here, against the same torch build as the GPU machine,
# and the GPU machine only unpacks wheels (benchmarks/device/install_te.sh). Lays out in the repo root:
#   .te/0/           transformer_engine, the built transformer_engine_torch, TE's Python deps, CORE_NAME
#   .te/1, .te/2 ..  the core wheel (transformer_engine_cu13, ~265 MiB) in parts of at most 56 MiB
# so that each folder fits one 64 MiB transfer. Needs Python 3.12 ($PYTHON), a CUDA toolkit
# ($CUDA_HOME, for nvcc and the CUDA runtime headers), g++ and PyPI. The first run compiles for about
# 15 min on one core (MAX_JOBS=1 by default); later runs reuse the cache and take seconds.
set -euo pipefail

TE_VERSION=${TE_VERSION:-2.20.2}
TORCH_VERSION=${TORCH_VERSION:-2.11.0}   # must be the GPU machine's torch (same C++ ABI and CUDA major)
PYTHON=${PYTHON:-python3.12}             # must be the GPU machine's Python minor version
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export MAX_JOBS=${MAX_JOBS:-1}
cache=${TE_BUILD_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/tulu_mcore/te-build}
venv=$cache/venv-torch$TORCH_VERSION
py=$venv/bin/python
out=$cache/wheels/te$TE_VERSION-torch$TORCH_VERSION
root=$(git rev-parse --show-toplevel)
mkdir -p "$cache/dl" "$out"

# Build venv: the full torch wheel with its nvidia-* dependencies, since setup.py imports torch
# (which loads cuDNN/NCCL) and the extension includes cudnn.h, nccl.h and cuSPARSE/cuBLAS headers.
if ! "$py" -c "import torch; assert torch.__version__.split('+')[0] == '$TORCH_VERSION'" 2>/dev/null; then
  rm -rf "$venv"
  "$PYTHON" -m venv "$venv"
  "$py" -m pip install -q "torch==$TORCH_VERSION" "setuptools<82" wheel packaging ninja pybind11 numpy
fi
cuda_major=$("$py" -c "import torch; print(torch.version.cuda.split('.')[0])")
nv=$("$py" -c "import nvidia; print(list(nvidia.__path__)[0])")

# Wheels for the GPU machine: platform-pinned, so this works on any x86-64 Linux build host.
plat=(--only-binary=:all: --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64
      --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
      --platform any)
dl() { "$py" -m pip download -q --no-deps "${plat[@]}" -d "$cache/dl" "$@"; }
dl "transformer-engine==$TE_VERSION" "transformer-engine-cu$cuda_major==$TE_VERSION"
# TE's Python needs that the GPU image lacks (see the wheels' Requires-Dist), fetched afresh so only
# one version of each is staged. pydantic comes with its own needs (pydantic-core at pydantic's exact
# pin, annotated-types, typing-inspection, typing-extensions). importlib-metadata is left out: on
# Python 3.12 TE uses the standard library's importlib.metadata.
rm -rf "$cache/deps"
"$py" -m pip download -q "${plat[@]}" -d "$cache/deps" pydantic
"$py" -m pip download -q --no-deps "${plat[@]}" -d "$cache/deps" nvdlfw-inspect "nvidia-cudnn-frontend>=1.29.0"

# The extension. NVTE_PYTORCH_FORCE_BUILD skips setup.py's attempt to fetch a prebuilt wheel from
# GitHub. The CUDA toolkit's include dir comes first (it has crt/*.h, which the pip CUDA headers lack);
# CPLUS_INCLUDE_PATH adds the headers only the nvidia-* wheels carry (cuDNN, NCCL, cuSPARSE, ...).
if ! ls "$out"/transformer_engine_torch-"$TE_VERSION"-*.whl >/dev/null 2>&1; then
  "$py" -m pip download -q --no-deps --no-binary :all: --no-build-isolation -d "$cache/dl" \
    "transformer-engine-torch==$TE_VERSION"
  start=$SECONDS
  NVTE_FRAMEWORK=pytorch NVTE_PYTORCH_FORCE_BUILD=TRUE PATH="$venv/bin:$CUDA_HOME/bin:$PATH" \
  CPLUS_INCLUDE_PATH="$nv/cu$cuda_major/include:$nv/cudnn/include:$nv/nccl/include${CPLUS_INCLUDE_PATH:+:$CPLUS_INCLUDE_PATH}" \
    nice -n 19 "$py" -m pip wheel -q --no-build-isolation --no-deps -w "$out" \
    "$cache/dl/transformer_engine_torch-$TE_VERSION.tar.gz"
  echo "built transformer_engine_torch in $((SECONDS - start)) s"
fi
ext=$(ls "$out"/transformer_engine_torch-"$TE_VERSION"-*.whl)
core=$(ls "$cache"/dl/transformer_engine_cu"$cuda_major"-"$TE_VERSION"-*.whl)

# Check (no GPU needed): the extension loads, i.e. every symbol it needs from torch and
# libtransformer_engine resolves. torch goes first: it puts libnccl/libcublas on the loader's list,
# which libtransformer_engine needs (the same holds on the GPU machine).
"$py" -m pip install -q --no-deps "$ext" "$core" "$cache/dl/transformer_engine-$TE_VERSION-py3-none-any.whl"
"$py" -m pip install -q --no-index --no-deps "$cache"/deps/*.whl
"$py" -c "import torch, transformer_engine.common as c; c.load_framework_extension('torch')
import transformer_engine_torch as tex; print('extension loads; cuDNN', tex.get_cudnn_version())"

# Lay out .te/ in the repo root, ignored by git (a worktree's exclude file is in the common dir).
exclude=$(cd "$root" && realpath -m "$(git rev-parse --git-path info/exclude)")
mkdir -p "$(dirname "$exclude")"
grep -qx '/.te/' "$exclude" 2>/dev/null || echo '/.te/' >> "$exclude"
rm -rf "$root/.te"
mkdir -p "$root/.te/0" "$root/.te/core"
cp "$ext" "$cache/dl/transformer_engine-$TE_VERSION-py3-none-any.whl" "$cache"/deps/*.whl "$root/.te/0/"
basename "$core" > "$root/.te/0/CORE_NAME"
(cd "$(dirname "$core")" && sha256sum "$(basename "$core")") > "$root/.te/0/CORE_SHA256"
(cd "$root/.te/core" && split -b 56M -d -a 2 "$core" part_)
i=1
for p in "$root"/.te/core/part_*; do mkdir -p "$root/.te/$i"; mv "$p" "$root/.te/$i/"; i=$((i + 1)); done
rmdir "$root/.te/core"
ls "$root/.te/0"
du -sh "$root"/.te/*
