# syntax=docker/dockerfile:1
# krul-worker: the OpenAI-compatible inference worker. Two variants from one file:
#   GPU (default): docker build -f deploy/docker/worker.Dockerfile -t krul/worker:0.1.0-cuda .
#   CPU:           docker build -f deploy/docker/worker.Dockerfile --build-arg VARIANT=cpu \
#                    -t krul/worker:0.1.0-cpu .
# The GPU variant compiles the CUDA backend with NVIDIA's CUDA toolkit for Debian 12 and
# ships the CUDA runtime libraries (cudart, cuBLAS, NCCL for tensor parallelism) on the same
# Debian 12 base as the build, so every other library keeps its Debian name; the NVIDIA
# container toolkit adds the driver at run time (NVIDIA_* variables below).
#
# Port (the Helm chart passes the same flags):
#   8080  HTTP: POST /v1/chat/completions, GET /healthz, /readyz, /metrics   --http_port
# Models: mount them read-only at /models (e.g. --model=/models/model.gguf).
# Runs as user 10001 with a read-only root filesystem (only /tmp needs to be writable).
#
# Secure by default: the worker refuses to serve its HTTP API on a non-loopback --host without
# API keys, so the default command reads them from /etc/krul/api-keys/api-keys, where the Helm
# chart mounts its Secret (auth.apiKeys). Make the file (hashes only, one tenant:sha256hex line
# per key, readable by user 10001) and mount its folder:
#   openssl rand -hex 24 > alice.key      # the key the client sends (16-4096 characters)
#   mkdir keys && krul-kvstore hash-token alice < alice.key > keys/api-keys
#   docker run -v "$PWD/keys:/etc/krul/api-keys:ro" -p 8080:8080 krul/worker:0.1.0-cpu
#   curl -H "Authorization: Bearer $(cat alice.key)" localhost:8080/v1/models
# Without the file the worker exits at start-up (it names the missing file). For a local try
# without keys, give the flags yourself with --insecure_http and publish on loopback only:
#   docker run -p 127.0.0.1:8080:8080 krul/worker:0.1.0-cpu \
#     --host=0.0.0.0 --http_port=8080 --synthetic --insecure_http

ARG VARIANT=cuda
# CUDA 12.x release installed from NVIDIA's debian12 repository (cuda-<x>-<y> packages).
ARG CUDA_VERSION=12-6

# ---- build base: Debian 12 with the packages of scripts/install-deps.sh -----------------
FROM debian:12 AS build-base
ARG DEBIAN_FRONTEND=noninteractive
# The build groups of KRUL_DEB_PACKAGES in scripts/install-deps.sh; tests/deploy checks
# that every name here is in that list.
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config git \
      libabsl-dev libgtest-dev libgmock-dev \
      libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler \
      librocksdb-dev libucx-dev prometheus-cpp-dev \
      nlohmann-json3-dev libcpp-httplib-dev libxxhash-dev \
    && rm -rf /var/lib/apt/lists/*

FROM build-base AS build-cpu
ENV KRUL_CMAKE_CUDA=-DKRUL_WITH_CUDA=OFF

FROM build-base AS build-cuda
ARG CUDA_VERSION
ARG DEBIAN_FRONTEND=noninteractive
ADD https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb /tmp/cuda-keyring.deb
# (ca-certificates first: NVIDIA's repository is served over HTTPS.)
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
    && apt-get update && apt-get install -y --no-install-recommends \
      cuda-nvcc-${CUDA_VERSION} cuda-cudart-dev-${CUDA_VERSION} libcublas-dev-${CUDA_VERSION} \
    && rm -rf /var/lib/apt/lists/*
ENV PATH=/usr/local/cuda/bin:${PATH}
# Hopper machine code plus Ampere PTX, as docs/cuda.md describes.
ENV KRUL_CMAKE_CUDA="-DKRUL_WITH_CUDA=ON -DKRUL_CUDA_ARCHITECTURES=90-real;80-virtual"

FROM build-${VARIANT} AS build
WORKDIR /src
COPY . .
# KRUL_NATIVE_ARCH=OFF: the image runs on other machines than the one that built it.
# KRUL_CMAKE_CUDA is split on spaces on purpose (two -D arguments in the CUDA variant).
# hadolint ignore=SC2086
RUN cmake -S . -B /build -G Ninja -DCMAKE_BUILD_TYPE=Release -DKRUL_NATIVE_ARCH=OFF ${KRUL_CMAKE_CUDA} \
    && cmake --build /build --target krul-worker \
    && install -D -m 0755 /build/bin/krul-worker /out/usr/local/bin/krul-worker \
    && deploy/docker/runtime-packages.sh /out/usr/local/bin/krul-worker > /out/runtime-packages.txt

# ---- runtime bases -----------------------------------------------------------------------
FROM debian:12-slim AS runtime-cpu

FROM debian:12-slim AS runtime-cuda
ARG CUDA_VERSION
ARG DEBIAN_FRONTEND=noninteractive
ADD https://developer.download.nvidia.com/compute/cuda/repos/debian12/x86_64/cuda-keyring_1.1-1_all.deb /tmp/cuda-keyring.deb
# The CUDA runtime: cudart and cuBLAS (linked), NCCL (opened at run time for tensor
# parallelism, so runtime-packages.sh cannot see it).
# (ca-certificates first: NVIDIA's repository is served over HTTPS.)
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && dpkg -i /tmp/cuda-keyring.deb && rm /tmp/cuda-keyring.deb \
    && apt-get update && apt-get install -y --no-install-recommends \
      cuda-cudart-${CUDA_VERSION} libcublas-${CUDA_VERSION} libnccl2 \
    && rm -rf /var/lib/apt/lists/*
# What the NVIDIA container toolkit reads to mount the driver into the container.
ENV NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    LD_LIBRARY_PATH=/usr/local/cuda/lib64

# ---- runtime ----------------------------------------------------------------------------
FROM runtime-${VARIANT}
ARG DEBIAN_FRONTEND=noninteractive
COPY --from=build /out/runtime-packages.txt /tmp/runtime-packages.txt
# Packages already present (the CUDA ones in the GPU variant) are skipped by apt.
RUN apt-get update \
    && xargs -a /tmp/runtime-packages.txt apt-get install -y --no-install-recommends \
    && rm -rf /var/lib/apt/lists/* /tmp/runtime-packages.txt \
    && groupadd --system --gid 10001 krul \
    && useradd --system --uid 10001 --gid krul --no-create-home --shell /usr/sbin/nologin krul \
    && install -d -m 0755 /models
COPY --from=build /out/usr/local/bin/krul-worker /usr/local/bin/krul-worker
USER 10001:10001
EXPOSE 8080
# Healthy while GET /healthz answers 200 (bash's /dev/tcp: no curl in the image). Change the
# port here if you change --http_port.
HEALTHCHECK --interval=10s --timeout=3s --start-period=120s --retries=3 \
  CMD ["/bin/bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8080 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["/usr/local/bin/krul-worker"]
# Listens on all interfaces of the container (the binary's default is loopback) with the API
# keys mounted as above; serves the seeded synthetic model until you pass --model (and drop
# --synthetic). Arguments given to `docker run` replace this whole list.
CMD ["--host=0.0.0.0", "--http_port=8080", "--synthetic", "--api_keys_file=/etc/krul/api-keys/api-keys"]
