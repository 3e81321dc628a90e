# syntax=docker/dockerfile:1
# The fieldtrack image: ingest, API, broker setup, migrations and the simulator.
# docker-compose.yml runs each of them from this one image.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN groupadd --system --gid 10001 fieldtrack \
    && useradd --system --uid 10001 --gid fieldtrack --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin fieldtrack

WORKDIR /app

# Dependencies first, in their own layer: a code change does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY . .
# Editable on purpose: services/core/paths.py finds dashboards/ and device_sim/scenarios/
# relative to the source tree (PROJECT_ROOT = /app), which a regular install would not keep.
# /app stays owned by root, so the code is read-only for the service user; the bytecode is
# compiled here because that user cannot write __pycache__.
RUN pip install --no-cache-dir -e . \
    && python -m compileall -q services device_sim \
    && mkdir -p /sim \
    && chown fieldtrack:fieldtrack /sim

USER fieldtrack

CMD ["fieldtrack", "--help"]
