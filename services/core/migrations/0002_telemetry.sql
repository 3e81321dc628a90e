-- What devices did: raw usage events and metric samples (hypertables), device state,
-- the quarantine, and the hourly usage rollup the dashboards read.

-- One row per usage reading. A message (device, seq) may carry several readings;
-- `item` is the reading's position, so a redelivered message maps onto the same keys.
CREATE TABLE usage_events (
    device_id    bigint NOT NULL,
    project_id   bigint NOT NULL,
    feature_key  text NOT NULL,
    device_time  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    seq          bigint NOT NULL,
    item         smallint NOT NULL DEFAULT 0,
    count        integer NOT NULL CHECK (count >= 0),
    duration_ms  bigint CHECK (duration_ms >= 0)
);
SELECT create_hypertable('usage_events', by_range('device_time', INTERVAL '1 day'));
CREATE UNIQUE INDEX usage_events_identity ON usage_events (device_id, device_time, seq, item);
CREATE INDEX usage_events_project_time ON usage_events (project_id, device_time DESC);

CREATE TABLE metric_samples (
    device_id    bigint NOT NULL,
    project_id   bigint NOT NULL,
    name         text NOT NULL,
    value        double precision NOT NULL,
    unit         text,
    device_time  timestamptz NOT NULL,
    received_at  timestamptz NOT NULL,
    seq          bigint NOT NULL,
    item         smallint NOT NULL DEFAULT 0
);
SELECT create_hypertable('metric_samples', by_range('device_time', INTERVAL '1 day'));
CREATE UNIQUE INDEX metric_samples_identity ON metric_samples (device_id, device_time, seq, item);
CREATE INDEX metric_samples_project_time ON metric_samples (project_id, device_time DESC);

-- Hourly usage per device and feature, updated in the same transaction as the raw rows
-- from the rows actually inserted (so redeliveries add nothing).
CREATE TABLE usage_hourly (
    project_id   bigint NOT NULL,
    feature_key  text NOT NULL,
    device_id    bigint NOT NULL,
    hour         timestamptz NOT NULL,
    events       bigint NOT NULL,
    readings     bigint NOT NULL,
    duration_ms  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (project_id, feature_key, hour, device_id)
);
CREATE INDEX usage_hourly_project_hour ON usage_hourly (project_id, hour);

CREATE TABLE device_state (
    device_id     bigint PRIMARY KEY REFERENCES devices (id),
    online        boolean,
    online_since  timestamptz,
    last_seen     timestamptz,
    last_seq      bigint,
    firmware      text
);

-- Every message that could not be stored, with the reason; nothing is dropped silently.
CREATE TABLE quarantine (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    received_at  timestamptz NOT NULL,
    topic        text NOT NULL,
    device_serial text,
    reason       text NOT NULL,
    detail       text,
    payload      bytea NOT NULL,
    payload_size integer NOT NULL
);
CREATE INDEX quarantine_received ON quarantine (received_at DESC);
CREATE INDEX quarantine_reason ON quarantine (reason, received_at DESC);
