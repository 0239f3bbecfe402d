# syntax=docker/dockerfile:1
# krul-kvstore: the KV storage service (gRPC control plane, UCX/gRPC data plane, DRAM ->
# RocksDB tiers). Build from the repository root:
#   docker build -f deploy/docker/kvstore.Dockerfile -t krul/kvstore:0.1.0 .
#
# Ports (nothing is published by default; the Helm chart passes the same flags):
#   7070  gRPC (control plane and the gRPC data plane)   --port
#   9464  Prometheus /metrics                           --metrics_port
# Data: /var/lib/krul (RocksDB under /var/lib/krul/kv); mount a volume there.
# Runs as user 10001 and needs no writable path besides /var/lib/krul and /tmp.

# ---- build: Debian 12 with the packages of scripts/install-deps.sh ----------------------
FROM debian:12 AS build
ARG DEBIAN_FRONTEND=noninteractive
# The build groups of KRUL_DEB_PACKAGES in scripts/install-deps.sh (toolchain, engine and
# tests, services); tests/deploy checks that every name here is in that list.
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config git \
      libabsl-dev libgtest-dev libgmock-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      librocksdb-dev libucx-dev prometheus-cpp-dev \
      nlohmann-json3-dev libcpp-httplib-dev libxxhash-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# KRUL_NATIVE_ARCH=OFF: the image runs on other machines than the one that built it.
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DKRUL_WITH_CUDA=OFF -DKRUL_NATIVE_ARCH=OFF \
    && cmake --build /build --target krul-kvstore \
    && install -D -m 0755 /build/bin/krul-kvstore /out/usr/local/bin/krul-kvstore \
    && deploy/docker/runtime-packages.sh /out/usr/local/bin/krul-kvstore > /out/runtime-packages.txt

# ---- runtime: slim Debian 12 with only the shared libraries the binary loads ------------
FROM debian:12-slim
ARG DEBIAN_FRONTEND=noninteractive
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
RUN apt-get update \
    && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
    && groupadd --system --gid 10001 krul \
    && useradd --system --uid 10001 --gid krul --home-dir /var/lib/krul --shell /usr/sbin/nologin krul \
    && install -d -o krul -g krul -m 0750 /var/lib/krul
COPY --from=build /out/usr/local/bin/krul-kvstore /usr/local/bin/krul-kvstore
USER 10001:10001
VOLUME ["/var/lib/krul"]
EXPOSE 7070 9464
# Healthy while the gRPC port accepts connections (the kvstore opens it once RocksDB has
# loaded). Bash's /dev/tcp needs no extra package. Change the port here if you change --port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/7070"]
ENTRYPOINT ["/usr/local/bin/krul-kvstore"]
# Listens on all interfaces of the container, so it is secure by default: mutual TLS and
# per-tenant tokens from the paths the Helm chart mounts (mount the same files with -v:
# tls.crt, tls.key, ca.crt under /etc/krul/tls and the tokens file made with
# `krul-kvstore hash-token` at /etc/krul/tenant-tokens/tokens; docs/deploy.md "Images").
# For a local try without them, pass your own flags with --insecure and publish on 127.0.0.1.
CMD ["--host=0.0.0.0", "--port=7070", "--metrics_port=9464", "--rocksdb_path=/var/lib/krul/kv", "--dram_capacity=1G", "--tls_cert_file=/etc/krul/tls/tls.crt", "--tls_key_file=/etc/krul/tls/tls.key", "--tls_client_ca_file=/etc/krul/tls/ca.crt", "--tenant_tokens_file=/etc/krul/tenant-tokens/tokens"]
