#!/usr/bin/env bash
# Assembles a CUDA toolkit from NVIDIA's wheels on PyPI, enough to build the appl-cuda package on a
# machine with no GPU and no CUDA install. Prints the environment to build with:
#
#   eval "$(packaging/cuda-toolkit.sh)"
#   CMAKE_CUDA_ARCHITECTURES=90 packaging/build-packages.sh --variant cuda
#
# Why CUDA 13: PyPI's CUDA 12 compiler wheels (nvidia-cuda-nvcc-cu12, every release from 12.0 to
# 12.9) carry only ptxas and libnvvm, for JIT use; there is no nvcc in them. From CUDA 13 the
# wheels (nvidia-cuda-nvcc, nvidia-nvvm, nvidia-cuda-crt, ...) hold the whole compiler in one
# tree, nvidia/cu13. A package built with it needs NVIDIA driver 580 or newer and the CUDA 13
# runtime and cuBLAS libraries at run time (packaging/INSTALL.md).
#
# What this adds to the wheels' tree: lib64 (a link to lib), the unversioned library links that
# the linker looks for, and a stub libcuda.so under lib/stubs, as NVIDIA's own toolkit has. The
# wheels carry no driver library, and ggml's CUDA backend calls the driver API (cuMemCreate and
# others, for its memory pool). The stub defines every function that cuda.h declares, under the
# driver's soname, libcuda.so.1: the link records that name, and the real driver's library is
# found at run time. An empty stub is not enough: the linker drops a library that defines none of
# the symbols it needs, and the backend then fails to load with "undefined symbol: cuMemCreate".
#
# Environment: APPL_CUDA_TOOLKIT (default ~/.cache/appl/cuda-13.0) is where it goes; a second run
# reuses it.
set -euo pipefail

CUDA_SERIES=13.0
WHEELS=(
  "nvidia-cuda-nvcc==13.0.88"
  "nvidia-nvvm==13.0.88"
  "nvidia-cuda-crt==13.0.88"
  "nvidia-cuda-runtime==13.0.96"
  "nvidia-cublas==13.0.2.14"
  "nvidia-cuda-cccl==13.0.85"
)

log() { printf 'cuda-toolkit: %s\n' "$*" >&2; }
die() { printf 'cuda-toolkit: error: %s\n' "$*" >&2; exit 1; }

dest=${APPL_CUDA_TOOLKIT:-${XDG_CACHE_HOME:-$HOME/.cache}/appl/cuda-$CUDA_SERIES}
root=$dest/nvidia/cu13

if [[ ! -x $root/bin/nvcc || ! -f $dest/.complete ]]; then
  command -v pip >/dev/null || die "pip is missing (apt-get install python3-pip)"
  command -v unzip >/dev/null || die "unzip is missing (apt-get install unzip)"
  command -v cc >/dev/null || die "a C compiler is missing (apt-get install build-essential)"
  rm -rf "$dest"
  mkdir -p "$dest/wheels"
  log "downloading ${WHEELS[*]} (about 540 MB)"
  pip download --quiet --no-deps --only-binary :all: --dest "$dest/wheels" "${WHEELS[@]}" \
    || die "pip could not download the CUDA wheels; on an offline machine, copy a finished $dest from a machine that has run this script"
  for wheel in "$dest"/wheels/*.whl; do
    unzip -q -o "$wheel" -d "$dest"
  done
  [[ -x $root/bin/nvcc ]] || die "no nvcc in the wheels (expected $root/bin/nvcc)"
  ln -sfn lib "$root/lib64"
  for lib in cudart cublas cublasLt; do
    so=$(cd "$root/lib" && ls "lib$lib.so."* | head -n 1)
    ln -sf "$so" "$root/lib/lib$lib.so"
  done
  rm -rf "$dest/wheels"
  touch "$dest/.complete"
  log "toolkit ready in $root ($("$root/bin/nvcc" --version | tail -n 2 | head -n 1))"
fi

stub=$root/lib/stubs/libcuda.so
if ! nm -D --defined-only "$stub" 2>/dev/null | grep ' cuMemCreate$' >/dev/null; then
  mkdir -p "$root/lib/stubs"
  stub_src=$(mktemp --suffix=.c)
  trap 'rm -f "$stub_src"' EXIT
  # The driver functions as cuda.h declares them after its macros (cuMemGetInfo is
  # cuMemGetInfo_v2, and so on): the names the real library exports.
  echo '#include <cuda.h>' | cc -E -I"$root/include" -x c - \
    | grep -oE 'CUresult +cu[A-Za-z0-9_]+ *\(' | sed -E 's/CUresult +//; s/ *\($//' | sort -u \
    | sed 's/.*/void &(void) {}/' > "$stub_src"
  [[ $(wc -l < "$stub_src") -gt 100 ]] || die "could not list the driver API from $root/include/cuda.h"
  cc -shared -fPIC -Wl,-soname,libcuda.so.1 -o "$stub" "$stub_src"
  log "driver stub: $stub ($(wc -l < "$stub_src") functions)"
fi

# CMake's FindCUDAToolkit and enable_language(CUDA) read these; llama-cpp-sys-2 passes every
# CMAKE_* variable on to CMake.
printf 'export CUDAToolkit_ROOT=%q\n' "$root"
printf 'export CMAKE_CUDA_COMPILER=%q\n' "$root/bin/nvcc"
printf 'export CUDACXX=%q\n' "$root/bin/nvcc"
printf 'export CUDA_PATH=%q\n' "$root"
printf 'export PATH=%q:"$PATH"\n' "$root/bin"
printf 'export LIBRARY_PATH=%q:%q${LIBRARY_PATH:+:$LIBRARY_PATH}\n' "$root/lib" "$root/lib/stubs"
