# chat-stream: one image, two binaries.
#   /usr/local/bin/chat-worker      Kafka → PostgreSQL + Redis   (health/metrics on HTTP_ADDR, e.g. :8081)
#   /usr/local/bin/chat-ws-server   WebSocket /ws, REST, /docs   (HTTP_ADDR, e.g. :8080)
#
#   docker build -t chat-stream .          # or: podman build -t chat-stream .
#   docker run --rm chat-stream                         # chat-ws-server (default command)
#   docker run --rm chat-stream chat-worker migrate     # any binary by name, with its arguments
#
# Dependency caching works with plain layer caching (Docker with or without BuildKit, Podman,
# kaniko): the manifests and Cargo.lock are copied first and the dependencies are built against
# stub sources, so a change to the project's own code rebuilds only the workspace crates.
# scripts/container-test builds and runs this file with podman against real services.

ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

# ---------------------------------------------------------------- builder
FROM rust:${RUST_VERSION}-slim-${DEBIAN_RELEASE} AS builder

# rdkafka builds librdkafka with cmake (feature cmake-build) and links OpenSSL and zlib.
# librdkafka 2.12 includes <curl/curl.h> for its OIDC code even when built without curl, so
# the headers are needed (the binaries do not link libcurl).
RUN apt-get update \
 && apt-get install -y --no-install-recommends cmake g++ make pkg-config libssl-dev zlib1g-dev \
      libcurl4-openssl-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
ENV CARGO_TERM_COLOR=never \
    CARGO_INCREMENTAL=0

# 1. Dependencies only: manifests + lock, stub sources for every workspace member.
COPY Cargo.toml Cargo.lock ./
COPY crates/chat-core/Cargo.toml crates/chat-core/
COPY crates/chat-service/Cargo.toml crates/chat-service/
COPY crates/chat-testkit/Cargo.toml crates/chat-testkit/
COPY crates/chat-bench/Cargo.toml crates/chat-bench/
COPY crates/chat-nemesis/Cargo.toml crates/chat-nemesis/
COPY services/worker/Cargo.toml services/worker/
COPY services/ws-server/Cargo.toml services/ws-server/
RUN set -eu; \
    for d in crates/chat-core crates/chat-service crates/chat-testkit services/worker services/ws-server; do \
      mkdir -p "$d/src"; echo '' > "$d/src/lib.rs"; \
    done; \
    for d in services/worker services/ws-server; do echo 'fn main() {}' > "$d/src/main.rs"; done; \
    mkdir -p crates/chat-bench/src/bin && echo 'fn main() {}' > crates/chat-bench/src/bin/ingest.rs; \
    mkdir -p crates/chat-nemesis/src && echo 'fn main() {}' > crates/chat-nemesis/src/main.rs; \
    cargo build --release --locked -p chat-worker -p chat-ws-server; \
    rm -rf crates services

# 2. The project's own code. COPY keeps the context's mtimes, which can be older than the stubs
#    above: touch the sources so cargo rebuilds the workspace crates.
COPY migrations migrations
COPY crates crates
COPY services services
RUN set -eu; \
    find crates services migrations -type f -exec touch {} +; \
    cargo build --release --locked -p chat-worker -p chat-ws-server; \
    install -D -m 0755 target/release/chat-worker /out/chat-worker; \
    install -D -m 0755 target/release/chat-ws-server /out/chat-ws-server

# Drop the debug info (profile.release keeps line tables: ~170 MB for both binaries) but keep
# the symbol table, so panics and backtraces still name functions.
RUN strip --strip-debug /out/chat-worker /out/chat-ws-server

# ---------------------------------------------------------------- runtime
FROM debian:${DEBIAN_RELEASE}-slim AS runtime

# Shared libraries the binaries link (OpenSSL 3, zlib), CA certificates for TLS, and curl for
# the Compose healthchecks. No compilers, no package lists.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates libssl3 zlib1g curl \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/* \
 && groupadd --system --gid 10001 chat \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin chat

COPY --from=builder /out/chat-worker /out/chat-ws-server /usr/local/bin/

USER 10001:10001
WORKDIR /tmp
# 8080: chat-ws-server (page, /ws, REST, /docs); 8082: chat-ws-server internal (/healthz, /readyz,
# /metrics; INTERNAL_HTTP_ADDR); 8081: chat-worker (/healthz, /readyz, /metrics). Each binary
# listens on HTTP_ADDR, by default 0.0.0.0 on its own port.
EXPOSE 8080 8081 8082
CMD ["chat-ws-server"]
