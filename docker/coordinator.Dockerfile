# syntax=docker/dockerfile:1
# Slim coordinator image: the static-ish `evalfleet` binary on distroless (glibc, CA certificates, no
# shell, user 65532). Build from the repository root:
#   docker build -f docker/coordinator.Dockerfile -t REGISTRY/evalfleet-coordinator:0.1.0 .
# No token or credential is ever copied in: the token is a Secret mounted at run time.

ARG RUST_VERSION=1.95
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /src
COPY . .
# The coordinator crate has no C/CUDA dependencies (protobuf is compiled by protox, in Rust).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release -p evalfleet --bin evalfleet \
 && install -D -m 0755 target/release/evalfleet /out/evalfleet \
 && strip /out/evalfleet

# Same Debian release as the build stage, so the glibc the binary was linked against is there.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/evalfleet /usr/local/bin/evalfleet
USER 65532:65532
WORKDIR /tmp
EXPOSE 50051
ENTRYPOINT ["/usr/local/bin/evalfleet"]
