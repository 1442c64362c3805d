# The pipeline's images, one build for all of them: the three stages and the Dataverse emulator.
# Every target shares the same layers and carries all four binaries; a target only picks the
# entrypoint, the listen address, the exposed port and the health check:
#
#   docker build --target gateway -t stripe-pipeline/gateway .
#   docker build --target enricher -t stripe-pipeline/enricher .
#   docker build --target sink-dataverse -t stripe-pipeline/sink-dataverse .
#   docker build --target dataverse-emulator -t stripe-pipeline/dataverse-emulator .
#
# docker-compose.yml builds each service from its target. Without --target the last one
# (gateway) is built. Every setting is an environment variable (see each crate's README); the
# health checks ask the binary's /readyz (/healthz for the emulator) on the port set here.

# The toolchain this workspace is built and tested with (rust-version in Cargo.toml is the
# oldest that builds it).
FROM rust:1.95.0-bookworm AS chef
# rdkafka-sys builds librdkafka from source (C toolchain, make, pkg-config, zlib for the `libz`
# feature; no TLS or SASL features are enabled, so no OpenSSL or Cyrus SASL); aws-lc-sys (rustls)
# wants cmake. The rust image already has the C toolchain, pkg-config and zlib1g-dev; they are
# named anyway so the list says what the build needs. Versions: see the runtime stage.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev \
 && rm -rf /var/lib/apt/lists/*
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

# The dependency recipe: only manifests and Cargo.lock, so the layer below is rebuilt only when
# dependencies change, not when the pipeline's code does.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# The same package selection as the build below (the whole workspace), so features resolve
# alike and the cooked dependencies are reused, not rebuilt.
RUN cargo chef cook --release --workspace --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --workspace --bins \
 && mkdir -p /out \
 && cp target/release/gateway target/release/enricher target/release/sink-dataverse \
       target/release/dataverse-emulator target/release/reconcile /out/

# The runtime: Debian slim with CA certificates (Dataverse, Entra ID and any TLS broker are
# verified against them) and curl for the health checks; an unprivileged user.
FROM debian:bookworm-slim AS runtime
# Debian's bookworm packages are security-patched in place, and pinning an exact version would
# break the build when the mirror drops it; the base image tag is what is pinned.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 pipeline \
 && useradd --system --uid 10001 --gid pipeline --no-create-home --shell /usr/sbin/nologin pipeline
COPY --from=builder /out/ /usr/local/bin/
USER 10001:10001
ENV RUST_LOG=info,rdkafka=warn

FROM runtime AS dataverse-emulator
ENV DATAVERSE_EMULATOR_LISTEN=0.0.0.0:8090
EXPOSE 8090
HEALTHCHECK --interval=5s --timeout=3s --start-period=10s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8090/healthz"]
ENTRYPOINT ["/usr/local/bin/dataverse-emulator"]

FROM runtime AS sink-dataverse
ENV SINK_LISTEN=0.0.0.0:9102
EXPOSE 9102
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9102/readyz"]
ENTRYPOINT ["/usr/local/bin/sink-dataverse"]

FROM runtime AS enricher
ENV ENRICHER_LISTEN=0.0.0.0:9101
EXPOSE 9101
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:9101/readyz"]
ENTRYPOINT ["/usr/local/bin/enricher"]

FROM runtime AS gateway
ENV GATEWAY_LISTEN=0.0.0.0:8080
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --start-period=60s --retries=3 \
  CMD ["curl", "-fsS", "-o", "/dev/null", "http://127.0.0.1:8080/readyz"]
ENTRYPOINT ["/usr/local/bin/gateway"]
