-- Sequence gaps, counted when messages are stored: messages a device numbered but that never
-- arrived (negative when a late message fills a gap counted earlier). Completeness is
-- messages ÷ (messages + missing), which sees lost hours and survives reboots.
ALTER TABLE device_hourly ADD COLUMN missing bigint NOT NULL DEFAULT 0;
-- The sequence number of the device's latest message by device time (not the largest ever:
-- after a reboot the numbering restarts).
ALTER TABLE device_state ADD COLUMN last_seq_at timestamptz;
