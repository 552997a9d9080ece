# Multi-stage build: compile with the Rust toolchain, ship only the binary on
# a slim Debian base, run as an unprivileged user.
#
#   docker build -t switchyard .
#   docker run --rm -p 8080:8080 -p 9900:9900 switchyard
#   docker run --rm -v $PWD/my.toml:/etc/switchyard/switchyard.toml switchyard

FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin switchyard

FROM debian:bookworm-slim
# ca-certificates: https to Consul without a `ca_file` trusts the system roots.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin switchyard \
    && mkdir -p /etc/switchyard /var/lib/switchyard \
    && chown switchyard /var/lib/switchyard
COPY --from=build /src/target/release/switchyard /usr/local/bin/switchyard
COPY examples/docker.toml /etc/switchyard/switchyard.toml
# The shipped templates, to use from a mounted config; render into
# /var/lib/switchyard (writable by the service user).
COPY templates /etc/switchyard/templates
USER switchyard
EXPOSE 8080 9900
# SIGTERM drains in-flight work (see [shutdown] grace) before exiting.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/switchyard"]
CMD ["run", "-c", "/etc/switchyard/switchyard.toml", "--log-format", "json"]
