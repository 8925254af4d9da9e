# Both Hubbub images from one file: they share the builder and the runtime base, and differ
# only in their last stage (`--target`). The build context is the repository root (the one
# `hubbub` distribution in pyproject.toml holds the gateway, the fan-out worker and the core):
#
#   docker build --target gateway -t hubbub-gateway:0.1.0 .
#   docker build --target fanout  -t hubbub-fanout:0.1.0 .
#
# Both stages use the same pinned image, so the console script's shebang
# (/usr/local/bin/python3) and the environment markers pip evaluated in the builder hold in
# the final image too.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# ---------------------------------------------------------------------------- builder
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

WORKDIR /src

# Only what the distribution is built from (pyproject.toml names README.md as its readme),
# so that edits to tests, docs or deploy/ do not invalidate this layer.
COPY pyproject.toml README.md ./
COPY shared/hubbub/ shared/hubbub/
COPY services/gateway/hubbub_gateway/ services/gateway/hubbub_gateway/
COPY services/fanout-worker/hubbub_fanout/ services/fanout-worker/hubbub_fanout/

# Every compiled dependency (uvloop, httptools, websockets, hiredis, orjson, pydantic-core)
# ships manylinux wheels for CPython 3.11, so the builder needs no compiler. The versions are
# pinned in pyproject.toml, and the second step installs only from the wheels just built.
# hadolint ignore=DL3013
RUN pip wheel --wheel-dir /wheels . \
 && pip install --no-index --find-links /wheels --prefix /install hubbub

# ---------------------------------------------------------------------------- runtime base
FROM ${PYTHON_IMAGE} AS runtime

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

# A fixed numeric user, so that Kubernetes' runAsNonRoot can verify it without a passwd lookup.
RUN groupadd --system --gid 10001 hubbub \
 && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin hubbub

# The prefix install lays out bin/ and lib/python3.11/site-packages/ under /usr/local.
COPY --from=builder /install /usr/local

USER 10001:10001

# ---------------------------------------------------------------------------- fanout
# The fan-out worker: reads the publish stream in a consumer group and writes to the gateways'
# inboxes. It serves one port, 9102 (HUBBUB_METRICS_PORT): /metrics for Prometheus and the
# /livez and /readyz probes, on every interface (HUBBUB_METRICS_HOST) so kubelet reaches them.
FROM runtime AS fanout

ENV HUBBUB_METRICS_HOST=0.0.0.0 \
    HUBBUB_METRICS_PORT=9102

EXPOSE 9102

# Exec form: the worker is PID 1 and handles SIGTERM itself (it stops reading, releases its
# leases and closes its Redis connections).
ENTRYPOINT ["hubbub-fanout"]

# ---------------------------------------------------------------------------- gateway
# The gateway: the SignalR endpoints for clients and the internal REST API, on port 8080.
# Last, so that a build without --target gives the gateway.
FROM runtime AS gateway

ENV HUBBUB_HOST=0.0.0.0 \
    HUBBUB_PORT=8080

EXPOSE 8080

# Exec form: the gateway is PID 1 and receives SIGTERM itself, which makes it send every
# client a SignalR Close with allowReconnect before it exits.
ENTRYPOINT ["hubbub-gateway"]
