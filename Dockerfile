# Multi-stage: build with the full toolchain, ship only the binary on distroless, as non-root.
FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY examples examples
COPY benches benches
RUN cargo build --release --locked --bin keygate

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/keygate /usr/local/bin/keygate
COPY conf/docker.yaml /etc/keygate/keygate.yaml
USER nonroot:nonroot
EXPOSE 6188 9188
ENTRYPOINT ["/usr/local/bin/keygate"]
CMD ["-c", "/etc/keygate/keygate.yaml"]
