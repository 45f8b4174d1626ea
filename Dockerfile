# realtime-gateway container image.
# Build:  docker build -t realtime-gateway .
# Run:    docker run -e DATABASE_URL=postgres://... -e JWT_SECRET=... -p 4000:4000 realtime-gateway
# The image has no PostgreSQL server: DATABASE_URL is required (EMBEDDED_DB=false).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# Dependencies first, so source edits do not rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY loadtest/Cargo.toml loadtest/Cargo.toml
RUN mkdir -p src loadtest/src \
 && echo 'fn main() {}' > src/main.rs && touch src/lib.rs \
 && echo 'fn main() {}' > loadtest/src/main.rs \
 && cargo build --release --locked -p realtime-gateway \
 && rm -rf src loadtest/src
COPY src src
COPY build.rs build.rs
COPY migrations migrations
COPY loadtest/src loadtest/src
RUN touch src/main.rs src/lib.rs && cargo build --release --locked -p realtime-gateway

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin gateway
COPY --from=build /src/target/release/realtime-gateway /usr/local/bin/realtime-gateway
USER 10001:10001
ENV LISTEN_ADDR=0.0.0.0:4000 \
    EMBEDDED_DB=false \
    LOG_FORMAT=json
EXPOSE 4000
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/realtime-gateway"]
CMD ["serve"]
