# syntax=docker/dockerfile:1
# Build: dependencies are compiled in their own layer, cached until Cargo.toml, Cargo.lock or the
# vendored crate change. The toolchain is named by its tag (tests/image.rs checks that the tests ran
# on the same one; rust-version in Cargo.toml is the floor); tags move with Debian's point
# releases, so pin a digest here if a build must be reproducible bit for bit.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /app
COPY Cargo.toml Cargo.lock ./
COPY tests/stack/Cargo.toml tests/stack/Cargo.toml
# Cargo.toml patches postgrest with this copy (vendor/README.md says why).
COPY vendor vendor
RUN mkdir -p src benches tests/stack/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > benches/throughput.rs \
 && touch tests/stack/src/lib.rs && echo 'fn main() {}' > tests/stack/src/main.rs \
 && cargo build --release --locked --bin twilio-ingest \
 && rm -rf src
COPY src src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin twilio-ingest

# Run: a slim base with CA certificates for HTTPS to Supabase, and an unprivileged user whose uid
# and gid are fixed, so file owners on the volume stay the same from one release to the next.
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 app \
 && useradd --system --uid 10001 --gid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin app
COPY --from=build /app/target/release/twilio-ingest /usr/local/bin/twilio-ingest
COPY scripts/docker-entrypoint.sh /usr/local/bin/docker-entrypoint
ENV PORT=8080 OPS_PORT=9091 SPOOL_DIR=/data/spool LOG_FORMAT=json
EXPOSE 8080 9091
ENTRYPOINT ["/usr/local/bin/docker-entrypoint"]
CMD ["serve"]
