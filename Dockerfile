# switchyard on the CPU: build with the Rust toolchain, run on Debian slim as
# a non-root user. The model weights are not in the image: mount them.
#
#   docker build -t switchyard:cpu .
#   docker run -p 8080:8080 -v $PWD/models:/app/models:ro switchyard:cpu
#
# The catalog is /app/models.toml (this repository's; mount your own over it).
# Its `source` paths are relative to it, so weights go in /app/models. The
# audit database is written under /app/data (a volume, or Postgres through
# SWITCHYARD_AUDIT_DB in a fleet: README, "Running a fleet").
# The GPU image is Dockerfile.cuda.

ARG RUST_VERSION=1.95.0
ARG DEBIAN=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN} AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p switchyard-server \
    && strip target/release/switchyard

FROM debian:${DEBIAN}-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /app --no-create-home switchyard
WORKDIR /app
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY models.toml models.evidence.json /app/
RUN mkdir -p /app/models /app/data \
    && sed -i 's|^audit_db = .*|audit_db = "data/switchyard-audit.db"|' /app/models.toml \
    && chown -R switchyard:switchyard /app/data
USER 10001:10001
ENV RUST_LOG=info
EXPOSE 8080
# /health: the process is up; /ready (the Kubernetes readiness probe): every
# preloaded model serves.
HEALTHCHECK --interval=15s --timeout=3s --start-period=120s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/health || exit 1
ENTRYPOINT ["switchyard"]
CMD ["serve", "--config", "/app/models.toml", "--addr", "0.0.0.0:8080"]
