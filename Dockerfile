# Touchline engine image.
#   docker build -t touchline .
#   docker run --rm -p 127.0.0.1:9464:9464 -v "$PWD/out:/data" touchline
#   (run directories under /data, /data/latest the last one; one JSON object per line on
#   stderr; docker stop = SIGTERM: the batch in flight is finished, exit code 143)
# Production (Kafka, Redis, Prometheus, Grafana): deploy/compose.yaml and README "Production".
#
# Three stages share one dependency layer:
#   deps     the locked runtime dependencies (requirements.lock: pinned, with hashes; the
#            "report" extra, matplotlib, is left out). Only the lock is copied first, so a
#            change to the source (or to pyproject's version) reuses this layer.
#   build    a wheel of Touchline itself, built offline with the locked setuptools.
#   runtime  deps + that wheel + examples/ (settings, journeys, e-mail templates), no source tree.
# Regenerate the lock after changing dependencies: see README "Docker".
FROM python:3.11-slim-bookworm AS deps
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
COPY requirements.lock /tmp/requirements.lock
RUN pip install --require-hashes -r /tmp/requirements.lock && rm /tmp/requirements.lock

FROM deps AS build
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY touchline ./touchline
COPY flows ./flows
COPY decisions ./decisions
COPY state ./state
COPY connectors ./connectors
COPY metrics ./metrics
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels .

FROM deps AS runtime
# Any command's outputs default to the /data volume; the metrics server listens on every
# interface of the container (publish it on loopback, or scrape it on the container network).
ENV TOUCHLINE_OUTPUT__DIR=/data TOUCHLINE_METRICS__HOST=0.0.0.0 \
    TOUCHLINE_LOGGING__FORMAT=json TOUCHLINE_LOGGING__LEVEL=info
COPY --from=build /wheels /wheels
# --no-deps: everything it needs is in the lock; pip check fails the build if the lock lacks any
RUN pip install --no-deps /wheels/*.whl && rm -r /wheels && pip check \
    && useradd --create-home --uid 10001 touchline && mkdir /data && chown touchline /data
# The working directory holds examples/ only, so the README's paths work as written:
#   docker run ... touchline run --config examples/journeys.toml
WORKDIR /app
COPY examples ./examples
USER touchline
VOLUME /data
EXPOSE 9464
# /healthz: alive unless the engine stopped or a batch is stuck (/readyz is for orchestrators' readiness probes)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
ENTRYPOINT ["touchline"]
CMD ["run", "--quiet", "--log-format", "json"]
