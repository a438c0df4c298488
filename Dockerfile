# The Trunkline image: the worker, beat and the HTTP API all run from it (docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY worker ./worker
COPY producers ./producers
COPY ops ./ops
RUN pip install . \
    && useradd --system --uid 10001 --create-home --home-dir /var/lib/trunkline trunkline

# Never root; the home folder is writable (celery beat keeps its schedule file there).
USER trunkline
WORKDIR /var/lib/trunkline
CMD ["trunkline", "--help"]
