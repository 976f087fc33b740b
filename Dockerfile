# liverank serving image: the serving install only (no torch, no trainer), run as a non-root user.
# Stage 1 builds wheels (the store's C kernel needs a compiler); stage 2 installs them into a slim image.
FROM python:3.11-bookworm AS build
WORKDIR /src
COPY pyproject.toml setup.py README.md constraints.txt ./
COPY store ./store
COPY serving ./serving
COPY exporter ./exporter
COPY trainer ./trainer
COPY loadtest ./loadtest
# liverank/ holds symlinks to the folders above; liverank/benchmarks is left dangling on purpose (not in the wheel).
COPY liverank ./liverank
RUN pip wheel --no-cache-dir --wheel-dir /wheels -c constraints.txt .

FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    LIVERANK_HOST=0.0.0.0 \
    LIVERANK_PORT=8000 \
    LIVERANK_DATA_DIR=/data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links=/wheels liverank==0.1.0 \
    && rm -rf /wheels \
    && useradd --system --uid 10001 --home-dir /data --create-home liverank
USER 10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status == 200 else 1)"]
ENTRYPOINT ["liverank"]
CMD ["serve"]
