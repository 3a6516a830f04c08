# The sendtrack worker image: `pip install .` (no dev extras) on python:3.11-slim, run as a non-root user.
# Build context: .dockerignore lets through only what `pip install .` needs. docs/docker.md runs it.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The pinned dependencies first, read from pyproject.toml, in their own layer: editing the code does
# not download them again (chDB alone is hundreds of MB). All of them ship manylinux wheels.
RUN --mount=type=bind,source=pyproject.toml,target=/tmp/pyproject.toml \
    python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# Then the project itself, built from a throw-away read-write mount of the context (no sources,
# build/ or egg-info left in the image).
RUN --mount=type=bind,target=/src,rw \
    pip install --no-deps /src

RUN useradd --system --user-group --uid 10001 --create-home --home-dir /home/sendtrack \
        --shell /usr/sbin/nologin sendtrack \
    && mkdir -p /data \
    && chown sendtrack:sendtrack /data

USER sendtrack
WORKDIR /home/sendtrack

# In a container the web server must listen on all interfaces; the data dir is a volume in compose.
ENV SENDTRACK_DATA_DIR=/data \
    SENDTRACK_WEB_HOST=0.0.0.0 \
    SENDTRACK_WEB_PORT=6066
EXPOSE 6066 8080

# The worker is healthy when its web server answers /health; urllib raises (exit 1) on errors and on
# any non-2xx status. The start period covers migrations, the Kafka rebalance and table recovery.
HEALTHCHECK --interval=15s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('SENDTRACK_WEB_PORT', '6066'), timeout=4)"]

CMD ["sendtrack", "worker"]
