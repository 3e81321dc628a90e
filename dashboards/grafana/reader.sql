-- The read-only database role Grafana logs in as: it may read what the dashboards show and
-- nothing else (no quarantined payloads, no decisions, no registry writes), every session is
-- read-only and queries stop after 30 s. Run as a role that may create roles, after
-- `fieldtrack db migrate` (the tables must exist); safe to run again, it resets the password:
--
--   psql -v ON_ERROR_STOP=1 -c '\getenv reader_password FIELDTRACK_GRAFANA_DB_PASSWORD' \
--        -f reader.sql
--
-- (psql 15 reads the password from its environment: never put it on the command line, where
-- every local user can read it.)
--
-- docker-compose.yml runs it (service grafana-db-setup); tests/integration/
-- test_grafana_dashboards.py runs every panel's SQL as this role.
SELECT NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'fieldtrack_grafana') AS create_reader
\gset
\if :create_reader
CREATE ROLE fieldtrack_grafana LOGIN;
\endif
ALTER ROLE fieldtrack_grafana WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
    NOBYPASSRLS CONNECTION LIMIT 10 PASSWORD :'reader_password';
ALTER ROLE fieldtrack_grafana SET default_transaction_read_only = on;
ALTER ROLE fieldtrack_grafana SET statement_timeout = '30s';

GRANT USAGE ON SCHEMA public TO fieldtrack_grafana;
GRANT SELECT ON customers, projects, features, deliveries, devices, device_state,
    usage_hourly, device_hourly, metric_samples TO fieldtrack_grafana;
-- Not the payload: quarantined messages can hold anything a device (or an attacker) sent.
GRANT SELECT (id, received_at, topic, device_serial, reason, detail, payload_size, copies,
               last_received_at)
    ON quarantine TO fieldtrack_grafana;
-- Alerts without their evidence (a PM alert's evidence is verdict material); never the
-- channels (webhook secrets, addresses) nor the outbox.
GRANT SELECT (id, rule_id, kind, project_id, subject, state, summary, fired_at, acknowledged_at,
               acknowledged_by, resolved_at, updated_at)
    ON alerts TO fieldtrack_grafana;
