# syntax=docker/dockerfile:1
# pgsteer container image: build with the Rust toolchain, run on distroless (glibc, no shell,
# no package manager) as the non-root user 65532.
#
#   docker build -t pgsteer:0.1.0 .
#   docker run --rm -v $PWD/deploy/examples:/etc/pgsteer:ro pgsteer:0.1.0 check --config /etc/pgsteer/static.toml

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# Cache mounts keep the registry and target directory between builds (BuildKit).
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p pgsteer \
 && install -D -m 0755 target/release/pgsteer /out/pgsteer

# cc: glibc + libgcc, which the Rust binary links against; :nonroot runs as 65532:65532.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/pgsteer /usr/local/bin/pgsteer
USER 65532:65532
# rw, ro, admin (/healthz /readyz /topology)
EXPOSE 6432 6433 9930
ENTRYPOINT ["/usr/local/bin/pgsteer"]
CMD ["run", "--config", "/etc/pgsteer/pgsteer.toml", "--log-format", "json"]
