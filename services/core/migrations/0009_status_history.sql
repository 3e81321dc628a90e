-- Every status a device reported (birth "online", last will "offline"), so the device page
-- can show when it came and went, not only how it is now (device_state). Written by ingest in
-- the same transaction as device_state; a status replayed by the broker adds nothing.
CREATE TABLE device_status_history (
    device_id    bigint NOT NULL REFERENCES devices (id),
    project_id   bigint NOT NULL,
    at           timestamptz NOT NULL,  -- the device's time, or when it arrived without one
    received_at  timestamptz NOT NULL,
    online       boolean NOT NULL,
    firmware     text,
    PRIMARY KEY (device_id, at, online)
);
SELECT create_hypertable('device_status_history', by_range('at', INTERVAL '30 days'));
