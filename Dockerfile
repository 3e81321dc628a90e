# The fieldtrack image: ingest, API, alerts, broker setup, migrations and the simulator.
# docker-compose.yml runs each of them from this one image. Built from Debian's packages
# (debian:bookworm-slim, Debian's Python 3.11) and PyPI; the runtime stage has no pip and no
# compiler.

# The virtual environment, with fieldtrack installed from its wheel.
FROM debian:bookworm-slim AS build
# PEM certificates pip trusts besides Debian's, for a TLS-intercepting proxy (empty: none).
ARG EXTRA_CA_CERTIFICATES=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    PATH=/opt/fieldtrack/bin:$PATH
RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends python3 python3-venv ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && if [ -n "$EXTRA_CA_CERTIFICATES" ]; then \
         printf '%s\n' "$EXTRA_CA_CERTIFICATES" > /usr/local/share/ca-certificates/extra.crt \
         && update-ca-certificates; \
       fi \
    && python3 -m venv /opt/fieldtrack

# Dependencies first, in their own layer: a code change does not reinstall them.
COPY pyproject.toml /tmp/pyproject.toml
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('/tmp/pyproject.toml', 'rb'))['project']['dependencies']))" \
       > /tmp/requirements.txt \
    && pip install -q -r /tmp/requirements.txt

# A regular install: templates, static files, scenarios and migrations are package data in
# site-packages (pip compiles the bytecode).
WORKDIR /src
COPY . .
RUN pip wheel -q --no-deps --wheel-dir /wheels . \
    && pip install --no-deps /wheels/*.whl \
    && pip uninstall -q -y pip

FROM debian:bookworm-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PATH=/opt/fieldtrack/bin:$PATH

RUN apt-get update -q \
    && apt-get install -y -q --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt /var/log/dpkg.log \
    && groupadd --system --gid 10001 fieldtrack \
    && useradd --system --uid 10001 --gid fieldtrack --no-create-home \
       --home-dir /nonexistent --shell /usr/sbin/nologin fieldtrack

# The installed package is owned by root and read-only for the service user. The working
# directory is the service user's: the state folder (./.state), the simulator's credentials
# (/sim) and, under the `cluster` profile, a NATS node's store (/nats/data) and the issuer's
# public key (/nats/issuer) are the only places it writes. Compose's named volumes take
# these folders' owner.
COPY --from=build /opt/fieldtrack /opt/fieldtrack
RUN mkdir -p /var/lib/fieldtrack /sim /nats/data /nats/issuer \
    && chown fieldtrack:fieldtrack /var/lib/fieldtrack /sim /nats/data /nats/issuer
WORKDIR /var/lib/fieldtrack

USER fieldtrack

CMD ["fieldtrack", "--help"]
