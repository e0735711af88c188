# Touchline engine image: `docker run --rm -p 127.0.0.1:9464:9464 touchline run --out /data`
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 \
    TOUCHLINE_METRICS__HOST=0.0.0.0 TOUCHLINE_LOGGING__FORMAT=json TOUCHLINE_LOGGING__LEVEL=info
RUN useradd --create-home --uid 10001 touchline
WORKDIR /app
COPY pyproject.toml README.md ./
COPY touchline ./touchline
COPY flows ./flows
COPY decisions ./decisions
COPY state ./state
COPY connectors ./connectors
COPY metrics ./metrics
RUN pip install . && mkdir /data && chown touchline /data
USER touchline
WORKDIR /data
EXPOSE 9464
# /healthz: alive unless the engine stopped or a batch is stuck (/readyz is for orchestrators' readiness probes)
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9464/healthz', timeout=4)"]
ENTRYPOINT ["touchline"]
CMD ["run", "--out", "/data"]
