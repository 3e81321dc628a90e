-- Message identity, sequence arithmetic that cannot overflow, and a quarantine that counts
-- repeats instead of adding rows (issue 22: findings 5, 4 and 3).

-- A device's boot counter (the payload's optional `boot`) is part of a message's identity:
-- a device without a clock that restarts at the same time with seq 0 sends new messages,
-- not repeats. -1: the message carried no boot counter (identified by seq and time, as
-- before). TimescaleDB wants the partitioning column in every unique index, so the key stays
-- on the reading's time and gains the boot; a resend with a fresh time is recognised by the
-- device's identity window instead (device_state below). Placed last, the int4 fits in the
-- padding of the index tuple: the index does not grow.
ALTER TABLE usage_events ADD COLUMN boot integer NOT NULL DEFAULT -1;
ALTER TABLE metric_samples ADD COLUMN boot integer NOT NULL DEFAULT -1;
DROP INDEX usage_events_identity;
CREATE UNIQUE INDEX usage_events_identity ON usage_events (device_id, device_time, seq, item, boot);
DROP INDEX metric_samples_identity;
CREATE UNIQUE INDEX metric_samples_identity
    ON metric_samples (device_id, device_time, seq, item, boot);

-- last_boot: the boot counter of the message at last_seq_at (-1: none), so the sequence walk
-- never counts a gap across two boots. identity_window: which sequence numbers of the
-- device's latest boots were stored (opaque to SQL; services/ingest/store.py packs it).
ALTER TABLE device_state
    ADD COLUMN last_boot integer NOT NULL DEFAULT -1,
    ADD COLUMN identity_window bytea;

-- Forward jumps in a device's numbering too large to be lost messages (a counter reset, a
-- re-flash, a corrupt counter): counted here as restarts instead of adding to `missing`, so
-- a seq of 2^63-1 can no longer overflow the rollups' sums.
ALTER TABLE device_hourly ADD COLUMN seq_jumps bigint NOT NULL DEFAULT 0;

-- The same message quarantined again (a retained message replayed on every ingest reconnect,
-- a redelivery, a re-imported file) adds no row: its row counts it. digest: BLAKE2b-128 of
-- the topic and the whole payload (NULL on rows from before: never matched). copies: how
-- many times it was quarantined; last_received_at: the latest of them (NULL on rows from
-- before). received_at stays the first: retention and the BRIN index go by it. Its reason
-- and detail say why it was refused the last time.
ALTER TABLE quarantine
    ADD COLUMN digest bytea,
    ADD COLUMN copies integer NOT NULL DEFAULT 1,
    ADD COLUMN last_received_at timestamptz;
CREATE UNIQUE INDEX quarantine_digest ON quarantine (digest);
