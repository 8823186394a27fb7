# The two o1pool images, from one wheel of this repository. Build from the repository root:
#   docker build --target operator -t o1pool-operator:dev .
#   docker build --target sidecar -t o1pool-sidecar:dev .
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY o1pool o1pool
COPY operator operator
COPY sidecar sidecar
COPY emulator emulator
COPY common common
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim AS runtime
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
# Non-root, matching the chart's podSecurityContext and the injected sidecar (runAsUser 65532).
USER 65532:65532
ENTRYPOINT ["o1pool"]

FROM runtime AS operator
CMD ["operator", "--all-namespaces", "--liveness=http://0.0.0.0:8081/healthz"]

# Injected next to app containers; the operator mounts the pool's ConfigMap at /etc/o1pool/config and
# its key Secret at /etc/o1pool/keys.
FROM runtime AS sidecar
ENTRYPOINT ["o1pool", "sidecar"]
CMD ["--config", "/etc/o1pool/config/config.yaml"]
