#!/bin/sh
# The TimescaleDB image's entrypoint. `postgres`: on the first start, create the cluster in
# the (empty) data volume with POSTGRES_USER as its owner and POSTGRES_DB, then run the
# server. Anything else (psql, for a one-shot service) runs as given.
set -eu

if [ "${1:-}" != "postgres" ]; then
  exec "$@"
fi

if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_USER:?set POSTGRES_USER}" "${POSTGRES_DB:?set POSTGRES_DB}"
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  # The password reaches initdb in a private file, never on argv (where `ps` shows it).
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
  initdb -D "$PGDATA" -U "$POSTGRES_USER" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=trust --auth-host=scram-sha-256 > /dev/null
  rm -f "$pwfile"
  echo "include = '/etc/postgresql/fieldtrack.conf'" >> "$PGDATA/postgresql.conf"
  # Other containers reach the server over the compose network, always with a password.
  echo "host all all all scram-sha-256" >> "$PGDATA/pg_hba.conf"
  # The database is created on the socket only: until the final start, no client on the
  # network (nor the healthcheck, over TCP) sees a half-made cluster.
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start > /dev/null
  createdb -U "$POSTGRES_USER" "$POSTGRES_DB"
  pg_ctl -D "$PGDATA" -m fast -w stop > /dev/null
  echo "fieldtrack-postgres: created the cluster, owner $POSTGRES_USER, database $POSTGRES_DB"
fi

shift
exec postgres -D "$PGDATA" "$@"
