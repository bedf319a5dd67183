# syntax=docker/dockerfile:1
# CUDA worker image: `evalfleet-worker` built with --features cuda,nccl on NVIDIA's CUDA devel image,
# run on the matching runtime image (cuBLAS, cuRAND, NCCL; libcuda comes from the node's driver via
# the NVIDIA container toolkit). `evalfleet-worker --tp-group K` runs one tensor-parallel group of K
# rank processes in one pod (k8s/overlays/tp).
# Build from the repository root (the candle CUDA kernels take ~10 min on 2 cores, less with more):
#   docker build -f docker/worker-cuda.Dockerfile -t REGISTRY/evalfleet-worker-cuda:0.1.0 .
#   # other GPUs: --build-arg CUDA_COMPUTE_CAP=80 (A100), 89 (L4/L40S); default 90 (H100/H200)
# CUDA 13.0 needs a node driver >= 580; for older drivers pick a 12.x CUDA_VERSION that the driver
# supports (and check that the tag exists: nvidia/cuda publishes <version>-{devel,runtime}-<os>).

ARG RUST_VERSION=1.95
ARG CUDA_VERSION=13.0.1
ARG UBUNTU=ubuntu24.04

# Only a source of a Rust toolchain: built on Debian bookworm (glibc 2.36), it runs on Ubuntu 24.04.
FROM rust:${RUST_VERSION}-slim-bookworm AS rust

FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build
ARG CUDA_COMPUTE_CAP=90
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=rust /usr/local/cargo /usr/local/cargo
COPY --from=rust /usr/local/rustup /usr/local/rustup
# No GPU or driver at build time: LIBRARY_PATH links against the toolkit's libcuda stub.
ENV CARGO_HOME=/usr/local/cargo RUSTUP_HOME=/usr/local/rustup PATH=/usr/local/cargo/bin:$PATH \
    CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    LIBRARY_PATH=/usr/local/cuda/lib64/stubs
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p evalfleet-worker --features cuda,nccl --bin evalfleet-worker \
 && install -D -m 0755 target/release/evalfleet-worker /out/evalfleet-worker \
 && strip /out/evalfleet-worker

FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU}
COPY --from=build /out/evalfleet-worker /usr/local/bin/evalfleet-worker
# The NVIDIA container toolkit reads these to mount the driver's libraries and devices.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility HOME=/tmp
USER 65532:65532
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/evalfleet-worker"]
