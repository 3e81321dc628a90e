-- Ingest to production standard: how late data may arrive per project, message counts and
-- sequence ranges per device and hour (data completeness), and registry change events.

-- Readings older than this many days (device time) are quarantined as too old; NULL means
-- the ingest default (FIELDTRACK_INGEST_LATE_DATA_DAYS).
ALTER TABLE projects ADD COLUMN late_data_days integer CHECK (late_data_days BETWEEN 1 AND 3650);

-- Messages newly stored per device and hour, with the sequence range they span: received
-- vs expected (seq_max - seq_min + 1) is the device's completeness. Redeliveries add nothing.
CREATE TABLE device_hourly (
    device_id   bigint NOT NULL,
    project_id  bigint NOT NULL,
    hour        timestamptz NOT NULL,
    messages    bigint NOT NULL,
    seq_min     bigint NOT NULL,
    seq_max     bigint NOT NULL,
    PRIMARY KEY (device_id, hour)
);
CREATE INDEX device_hourly_project_hour ON device_hourly (project_id, hour);

-- Ingest caches which device a serial is; this tells it at once when that changes.
CREATE FUNCTION notify_device_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('fieldtrack_devices', coalesce(NEW.serial, OLD.serial));
    RETURN NULL;
END;
$$;
CREATE TRIGGER devices_changed AFTER INSERT OR UPDATE OR DELETE ON devices
    FOR EACH ROW EXECUTE FUNCTION notify_device_change();

DROP VIEW project_details;
CREATE VIEW project_details AS
SELECT p.id, p.customer_id, c.name AS customer_name, p.name, p.contract_value, p.currency,
       p.go_live_date, p.status, p.retention_days, p.late_data_days, p.created_at,
       (SELECT count(*) FROM devices d WHERE d.project_id = p.id AND d.status = 'active')::int
           AS devices
FROM projects p JOIN customers c ON c.id = p.customer_id;
