# syntax=docker/dockerfile:1
# The fieldtrack image: ingest, API, broker setup, migrations and the simulator.
# docker-compose.yml runs each of them from this one image.

# The wheel, built from the source tree; the image keeps the installed package only.
FROM python:3.11-slim AS wheel
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY . .
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /wheels .

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN groupadd --system --gid 10001 fieldtrack \
    && useradd --system --uid 10001 --gid fieldtrack --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin fieldtrack

# Dependencies first, in their own layer: a code change does not reinstall them.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt /tmp/pyproject.toml

# A regular install: templates, static files, scenarios and migrations are package data in
# site-packages, owned by root and read-only for the service user (pip compiles the
# bytecode). The working directory is the service user's: the state folder (./.state) and
# the simulator's credentials (/sim) are the only places it writes.
COPY --from=wheel /wheels /wheels
RUN pip install --no-cache-dir --no-deps /wheels/*.whl \
    && rm -rf /wheels \
    && mkdir -p /var/lib/fieldtrack /sim \
    && chown fieldtrack:fieldtrack /var/lib/fieldtrack /sim
WORKDIR /var/lib/fieldtrack

USER fieldtrack

CMD ["fieldtrack", "--help"]
