# Production image: `docker compose up` builds it (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# Only what the package needs, so .venv/ and var/ of a checkout stay out.
# README.md* is a glob so the build still works while the file is absent.
COPY pyproject.toml README.md* ./
COPY teleconsult/ ./teleconsult/
RUN pip install . && rm -rf /app/build

# Fixed uid/gid so operators can chown bind-mounted secrets to it.
RUN groupadd --system --gid 10001 teleconsult \
    && useradd --system --uid 10001 --gid teleconsult --home-dir /data \
        --no-create-home --shell /usr/sbin/nologin teleconsult \
    && mkdir -p /data \
    && chown teleconsult:teleconsult /data

USER teleconsult:teleconsult
ENV HOST=0.0.0.0 \
    PORT=8080 \
    TELECONSULT_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 8080

CMD ["teleconsult", "serve"]
