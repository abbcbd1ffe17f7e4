# syntax=docker/dockerfile:1
#
# CPU image (default target):   docker build -t kiln .
# CUDA image:                   docker build --target cuda -t kiln:cuda .
#                               (CUDA_COMPUTE_CAP: 90 for Hopper, 80 for Ampere, ...)
#
# Run:  docker run -p 8080:8080 -p 8081:8081 -v "$PWD/models:/models" kiln
# The server listens on 0.0.0.0:8080 (HTTP) and 0.0.0.0:8081 (gRPC; KILN_GRPC_LISTEN= turns
# it off), serves /models, keeps datasets and jobs in /data,
# and reads /config/kiln.toml (mount your own over it). It runs as a non-root user.
# HTTPS without a terminating load balancer: mount the PEM files (readable by that user) and
#   -e KILN_TLS_CERT=/tls/cert.pem -e KILN_TLS_KEY=/tls/key.pem -v "$PWD/tls:/tls:ro"
# (HEALTHCHECK's `kiln health` reads KILN_TLS_CERT too and then probes over TLS).

ARG RUST_VERSION=1.95

# === CPU build ===
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin kiln \
 && mkdir -p /out/data \
 && cp target/release/kiln /out/kiln

# === CUDA build and runtime (opt-in: --target cuda) ===
FROM nvidia/cuda:12.4.1-devel-ubuntu22.04 AS build-cuda
ARG RUST_VERSION
ARG CUDA_COMPUTE_CAP=90
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} PATH=/root/.cargo/bin:${PATH}
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential \
 && rm -rf /var/lib/apt/lists/* \
 && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain ${RUST_VERSION}
WORKDIR /src
COPY . .
RUN cargo build --release --locked --features cuda --bin kiln && cp target/release/kiln /usr/local/bin/kiln

FROM nvidia/cuda:12.4.1-runtime-ubuntu22.04 AS cuda
RUN useradd --system --uid 10001 --create-home kiln && mkdir -p /data /config && chown kiln /data
COPY --from=build-cuda /usr/local/bin/kiln /usr/local/bin/kiln
COPY models /models
COPY config/kiln.toml /config/kiln.toml
ENV KILN_LISTEN=0.0.0.0:8080 KILN_MODELS=/models KILN_DATA=/data KILN_CONFIG=/config/kiln.toml \
    KILN_DEVICE=cuda:0 KILN_HEALTH_ADDR=127.0.0.1:8080
USER kiln
EXPOSE 8080 8081
VOLUME ["/models", "/data"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 CMD ["kiln", "health"]
ENTRYPOINT ["kiln"]
CMD ["serve"]

# === CPU runtime (default) ===
# distroless/cc has glibc and libgcc, all kiln links against; no shell, no package manager.
FROM gcr.io/distroless/cc-debian12:nonroot AS cpu
COPY --from=build /out/kiln /usr/local/bin/kiln
COPY --from=build --chown=65532:65532 /out/data /data
COPY models /models
COPY config/kiln.toml /config/kiln.toml
ENV KILN_LISTEN=0.0.0.0:8080 KILN_MODELS=/models KILN_DATA=/data KILN_CONFIG=/config/kiln.toml \
    KILN_HEALTH_ADDR=127.0.0.1:8080
USER nonroot
EXPOSE 8080 8081
VOLUME ["/models", "/data"]
HEALTHCHECK --interval=10s --timeout=5s --start-period=10s --retries=3 CMD ["kiln", "health"]
ENTRYPOINT ["kiln"]
CMD ["serve"]
