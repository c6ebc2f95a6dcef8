# The wasmnode image: FROM scratch around the static (musl) binary, the built-in plugins,
# the example topologies, their compiled code and a CA bundle. Nothing is pulled.
#
# Build it with `./dev image`, which builds the binary and the plugins, lays them out in a
# context folder (rootfs/) and runs `docker build` on it. Layout inside the image:
#
#   /usr/local/bin/wasmnode          the host (also the CLI: `docker exec C wasmnode nodes ...`)
#   /wasmnode/plugins/dist/*.wasm    built-in strategies and the example workers
#   /wasmnode/config/*.toml          the repository's config/ (compose.toml is the default)
#   /wasmnode/cache/                 compiled code of the built-in plugins (no compile at start)
#   /etc/ssl/certs/ca-certificates.crt
FROM scratch
COPY rootfs/ /
COPY --chown=10001:10001 cache/ /wasmnode/cache/
ENV PATH=/usr/local/bin \
    WASMNODE_CACHE_DIR=/wasmnode/cache \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 10001:10001
WORKDIR /wasmnode
# 4370: distribution (node to node); 9090: /healthz, /readyz, /metrics and the gateway.
EXPOSE 4370 9090
ENTRYPOINT ["wasmnode"]
CMD ["run", "--config", "/wasmnode/config/compose.toml"]
