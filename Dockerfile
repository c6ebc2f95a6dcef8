# The wasmnode image: FROM scratch around the static (musl) binary, the built-in plugins,
# the example topologies, their compiled code and a CA bundle. Nothing is pulled.
#
# Build it with `./dev image`, not `docker build .`: the script builds the binary and the
# plugins, lays them out in a context folder (rootfs/ and cache/) and runs `docker build`
# on that folder. The repository is not a build context (its .dockerignore sends nothing),
# so `docker build .` here stops at once at the first COPY: rootfs/ is not found.
#
# Layout inside the image:
#
#   /usr/local/bin/wasmnode          the host (also the CLI: `docker exec C wasmnode nodes ...`)
#   /wasmnode/plugins/dist/*.wasm    built-in strategies and the example workers
#   /wasmnode/config/*.toml          the repository's config/ (compose.toml is the default)
#   /wasmnode/cache/                 compiled code of the built-in plugins (no compile at start)
#   /etc/ssl/certs/ca-certificates.crt
# `docker build .` from the repository stops at the first COPY, rootfs/ not found: run
# `./dev image`. (The classic builder prints this ARG as its first step; BuildKit shows it
# with the error.)
ARG HOW_TO_BUILD="run ./dev image: docker build . in the repository stops at the first COPY"
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 cache/ /wasmnode/cache/
# OCI annotations, read with `docker image inspect -f '{{json .Config.Labels}}' IMAGE`.
# VERSION's default is Cargo.toml's version (tools/validate-k8s.py checks that they agree).
ARG VERSION=0.1.0
ARG SOURCE=https://github.com/wasmnode/wasmnode
LABEL org.opencontainers.image.title="wasmnode" \
      org.opencontainers.image.description="A node host for WebAssembly applications: discovery, distribution and workers" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.source="${SOURCE}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/usr/local/bin \
    WASMNODE_CACHE_DIR=/wasmnode/cache \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 10001:10001
WORKDIR /wasmnode
# 4370: distribution (node to node); 9090: /healthz, /readyz, /metrics and the gateway.
EXPOSE 4370 9090
ENTRYPOINT ["wasmnode"]
CMD ["run", "--config", "/wasmnode/config/compose.toml"]
