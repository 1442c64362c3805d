# syntax=docker/dockerfile:1
# One image for the pipeline: the three stages and the Dataverse emulator. The compose file runs
# each with its own command; all settings come from the environment.
#
#   docker build -t stripe-pipeline:local .
#
# The build keeps Cargo's registry and the target folder in BuildKit cache mounts, so a source
# change rebuilds only the workspace crates, not the dependencies (librdkafka among them).

FROM rust:1.95-bookworm AS build
# librdkafka (built from source by rdkafka-sys) needs a C toolchain, make and zlib; the OTLP
# exporter's protobuf types need protoc.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev protobuf-compiler \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p gateway -p enricher -p sink-dataverse -p dataverse-emulator --bins \
    && mkdir -p /out \
    && cp target/release/gateway target/release/enricher target/release/sink-dataverse \
       target/release/dataverse-emulator /out/

FROM debian:bookworm-slim AS runtime
# ca-certificates for HTTPS to Dataverse and Entra ID; curl for the health checks.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin pipeline
COPY --from=build /out/ /usr/local/bin/
USER 10001
WORKDIR /tmp
# Each service sets HEALTH_URL to its own /readyz (the stages listen on different ports).
ENV HEALTH_URL=http://127.0.0.1:8080/readyz
HEALTHCHECK --interval=5s --timeout=3s --start-period=20s --retries=6 \
    CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null \"$HEALTH_URL\" || exit 1"]
CMD ["gateway"]
