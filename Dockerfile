# weir: an L7 HTTP reverse-proxy load balancer.
#
#   docker build -t weir .
#   docker run --rm -p 8080:8080 -v "$PWD/examples/docker:/etc/weir:ro" weir
#
# The container runs `weir run` with WEIR_CONFIG=/etc/weir: every *.yaml / *.yml file in /etc/weir is
# merged in name order. Relative certificate paths resolve against /etc/weir (the working directory),
# so mount `certs/` beside the YAML files. Listeners must bind 0.0.0.0 (not 127.0.0.1) to be
# reachable through `-p`. SIGTERM (`docker stop`) drains; SIGHUP (`docker kill -s HUP`) reloads.

# ---- build ----------------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, against placeholder sources, so that editing weir's own code reuses this layer.
COPY Cargo.toml Cargo.lock ./
# The build flags every build of weir uses, for the dependencies too: LLVM's inlining threshold, and
# the PGO profile that .cargo/rustc-wrapper applies when this image's rustc is on the LLVM that wrote it.
COPY .cargo ./.cargo
RUN mkdir -p src \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && cargo build --release --locked \
 && rm -rf src target/release/.fingerprint/weir-* target/release/deps/weir-* \
           target/release/deps/libweir-* target/release/weir

# weir itself (demo.rs embeds routes/demo.yaml at compile time).
COPY src ./src
COPY routes ./routes
RUN touch src/main.rs src/lib.rs \
 && cargo build --release --locked \
 && strip target/release/weir

# ---- runtime --------------------------------------------------------------------------------------
FROM debian:bookworm-slim
# ca-certificates: the system roots that pools with `tls: true` and no `ca:` verify servers against.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 weir \
 && useradd --system --uid 10001 --gid weir --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin weir
COPY --from=build /src/target/release/weir /usr/local/bin/weir

WORKDIR /etc/weir
ENV WEIR_CONFIG=/etc/weir
USER weir:weir
EXPOSE 8080 8443
STOPSIGNAL SIGTERM
ENTRYPOINT ["weir"]
CMD ["run"]
