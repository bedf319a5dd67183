#!/usr/bin/env bash
# Builds the CUDA worker (`evalfleet-worker`) and `evalfleet-bench` on a machine without a GPU or a
# system CUDA toolkit, from pinned PyPI CUDA 13.0 wheels, then strips and xz-packs them into dist/
# small enough to carry to a GPU machine (see README.md, "GPU").
#
# Steps (each is skipped when its output is already there, so re-running is cheap):
#   1. pip-download the pinned wheels into .cuda/wheels (EVALFLEET_CUDA_WHEELS=DIR: take wheels
#      from DIR first, e.g. a previous download);
#   2. unpack them into one CUDA home .cuda/home/nvidia/cu13/{bin,nvvm,include,lib};
#   3. add the unversioned .so links the linker wants and a stub libcuda.so (soname libcuda.so.1,
#      one empty function per driver API name in cuda.h) in lib/stubs: the real driver library
#      only exists on the GPU machine;
#   4. cargo build --release --features cuda,nccl into target-cuda/ (a separate target dir: the
#      candle-kernels build takes ~10 minutes and must not be invalidated by CPU builds);
#   5. strip + xz into dist/.
#
# Usage: scripts/build-cuda.sh [--toolkit-only]   (--toolkit-only: steps 1-3, no cargo build)
# Environment: PYTHON (with pip; default python3), CUDA_COMPUTE_CAP (default 90: H100/H200, sm_90a),
# EVALFLEET_CUDA_FEATURES (default cuda,nccl), CARGO_BUILD_JOBS / CUDAFORGE_THREADS (default 1 each:
# the build machine is shared), EVALFLEET_CUDA_WHEELS (see step 1).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CUDA_DIR="$ROOT/.cuda"
WHEELS_DIR="$CUDA_DIR/wheels"
HOME_DIR="$CUDA_DIR/home"
CUDA_ROOT="$HOME_DIR/nvidia/cu13"
TARGET_DIR="$ROOT/target-cuda"
DIST_DIR="$ROOT/dist"
PYTHON="${PYTHON:-python3}"
FEATURES="${EVALFLEET_CUDA_FEATURES:-cuda,nccl}"
BINS=(evalfleet-worker evalfleet-bench evalfleet-train)

# Pinned 13.0.x: a newer toolkit writes PTX that driver 580 (CUDA 13.0) cannot JIT. curand and nccl
# follow their own numbering; their sonames (libcurand.so.10, libnccl.so.2) are what matters.
WHEELS=(
  nvidia-cuda-nvcc==13.0.88
  nvidia-nvvm==13.0.88
  nvidia-cuda-runtime==13.0.96
  nvidia-cuda-crt==13.0.88
  nvidia-cuda-cccl==13.0.85
  nvidia-cuda-nvrtc==13.0.88
  nvidia-cublas==13.0.2.14
  nvidia-curand==10.4.5.25
  nvidia-nccl-cu13==2.32.3
)

log() { printf '[build-cuda %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# The wheel file name pip would save for spec NAME==VERSION (dashes become underscores).
wheel_glob() {
  local name="${1%%==*}" version="${1##*==}"
  printf '%s-%s-*.whl' "${name//-/_}" "$version"
}

download_wheels() {
  mkdir -p "$WHEELS_DIR"
  local spec pattern
  for spec in "${WHEELS[@]}"; do
    pattern="$(wheel_glob "$spec")"
    # shellcheck disable=SC2086 # the pattern must glob
    if compgen -G "$WHEELS_DIR/$pattern" >/dev/null; then continue; fi
    if [[ -n "${EVALFLEET_CUDA_WHEELS:-}" ]] && compgen -G "$EVALFLEET_CUDA_WHEELS/$pattern" >/dev/null; then
      cp $EVALFLEET_CUDA_WHEELS/$pattern "$WHEELS_DIR/"
      continue
    fi
    log "downloading $spec"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d "$WHEELS_DIR" "$spec"
  done
}

# Unzips every wheel into HOME_DIR: they all put their files under nvidia/cu13/ (nccl under
# nvidia/nccl/), which together form a usable CUDA home.
unpack_wheels() {
  local stamp="$HOME_DIR/.unpacked" want
  want="$(printf '%s\n' "${WHEELS[@]}")"
  if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then return; fi
  log "unpacking wheels into $HOME_DIR"
  rm -rf "$HOME_DIR"
  mkdir -p "$HOME_DIR"
  "$PYTHON" - "$WHEELS_DIR" "$HOME_DIR" "${WHEELS[@]}" <<'EOF'
import glob, os, stat, sys, zipfile
wheels_dir, home, specs = sys.argv[1], sys.argv[2], sys.argv[3:]
for spec in specs:
    name, version = spec.split("==")
    (path,) = glob.glob(os.path.join(wheels_dir, f"{name.replace('-', '_')}-{version}-*.whl"))
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            out = z.extract(info, home)
            # zipfile drops the executable bits; nvcc, ptxas, cicc ... need them.
            mode = info.external_attr >> 16
            if mode & stat.S_IXUSR:
                os.chmod(out, os.stat(out).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
EOF
  printf '%s\n' "$want" >"$stamp"
}

# The linker resolves -lfoo through libfoo.so; wheels ship only the versioned sonames.
link_unversioned() {
  local lib so base
  mkdir -p "$CUDA_ROOT/lib"
  # NCCL comes in its own wheel directory; link it into the CUDA home so one -L finds everything.
  for lib in "$HOME_DIR"/nvidia/nccl/lib/libnccl.so.*; do
    ln -sf "../../nccl/lib/$(basename "$lib")" "$CUDA_ROOT/lib/$(basename "$lib")"
  done
  ln -sfn "../../nccl/include/nccl.h" "$CUDA_ROOT/include/nccl.h" 2>/dev/null || true
  for so in "$CUDA_ROOT"/lib/lib*.so.*; do
    base="$(basename "$so")"
    base="${base%%.so.*}.so"
    [[ -e "$CUDA_ROOT/lib/$base" ]] || ln -s "$(basename "$so")" "$CUDA_ROOT/lib/$base"
  done
}

# A libcuda.so that exports every driver API name declared in cuda.h (after macro expansion, so the
# _v2/_v3 names the headers select are included) as an empty function. It is only ever linked
# against: at run time the driver's own libcuda.so.1 is loaded.
make_libcuda_stub() {
  local stubs="$CUDA_ROOT/lib/stubs"
  [[ -f "$stubs/libcuda.so" ]] && return
  log "generating the libcuda.so stub"
  mkdir -p "$stubs"
  gcc -E -P -I"$CUDA_ROOT/include" -x c "$CUDA_ROOT/include/cuda.h" >"$stubs/cuda.i"
  "$PYTHON" - "$stubs/cuda.i" "$CUDA_ROOT/include/cuda.h" "$stubs/libcuda_stub.c" <<'EOF'
import re, sys
pre, header, out = sys.argv[1:]
names = set(re.findall(r"\b(cu[A-Z][A-Za-z0-9_]*)\s*\(", open(pre).read()))
# Also the un-suffixed names the macros rename (cuMemAlloc -> cuMemAlloc_v2): the real driver
# exports both, and code written against either must link.
names |= set(re.findall(r"#define\s+(cu[A-Z][A-Za-z0-9_]*)\s+cu[A-Z]", open(header).read()))
with open(out, "w") as f:
    f.write("/* generated by scripts/build-cuda.sh: link-time stub of the CUDA driver API */\n")
    for n in sorted(names):
        f.write(f"int {n}(void) {{ return 999; }}\n")
print(f"{len(names)} driver API functions", file=sys.stderr)
EOF
  gcc -shared -fPIC -O0 -Wl,-soname,libcuda.so.1 -o "$stubs/libcuda.so" "$stubs/libcuda_stub.c"
  ln -sf libcuda.so "$stubs/libcuda.so.1"
}

build() {
  log "cargo build --release --features $FEATURES (CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90})"
  local start=$SECONDS
  (
    cd "$ROOT"
    export CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" CUDA_ROOT="$CUDA_ROOT"
    export PATH="$CUDA_ROOT/bin:$PATH"
    export LIBRARY_PATH="$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs${LIBRARY_PATH:+:$LIBRARY_PATH}"
    export CUDA_COMPUTE_CAP="${CUDA_COMPUTE_CAP:-90}"
    export CUDAFORGE_THREADS="${CUDAFORGE_THREADS:-1}"
    export CARGO_TARGET_DIR="$TARGET_DIR"
    # evalfleet-bench is in the tools crate, whose cuda/nccl features are the worker's.
    cargo build --release -j "${CARGO_BUILD_JOBS:-1}" -p evalfleet-worker -p evalfleet-tools \
      --features "$FEATURES" "${BINS[@]/#/--bin=}"
  )
  log "build took $((SECONDS - start)) s"
}

pack() {
  mkdir -p "$DIST_DIR"
  local bin src mib
  mib() { echo "$(( $(stat -c %s "$1") / 1048576 )) MiB"; }
  for bin in "${BINS[@]}"; do
    src="$TARGET_DIR/release/$bin"
    strip -o "$DIST_DIR/$bin" "$src"
    xz -T1 -6 -f -k "$DIST_DIR/$bin"
    log "$bin: $(mib "$src") built, $(mib "$DIST_DIR/$bin") stripped, $(mib "$DIST_DIR/$bin.xz") packed"
    rm -f "$DIST_DIR/$bin"
  done
  log "dist/: $(du -sh "$DIST_DIR" | cut -f1) in all"
  log "libraries the worker needs (resolved here against the wheels; libcuda.so.1 comes from the driver):"
  LD_LIBRARY_PATH="$CUDA_ROOT/lib:$CUDA_ROOT/lib/stubs" ldd "$TARGET_DIR/release/${BINS[0]}" >&2
}

main() {
  download_wheels
  unpack_wheels
  link_unversioned
  make_libcuda_stub
  if [[ "${1:-}" == "--toolkit-only" ]]; then return; fi
  build
  pack
}

main "$@"
