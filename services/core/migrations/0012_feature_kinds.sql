-- Features judged by their kind, and what devices report as enabled.
--
-- A feature is interactive (judged by use) or standing (an alarm, a safeguard, a schedule:
-- judged by being enabled on devices, not by how often it fires).
ALTER TABLE features ADD COLUMN kind text NOT NULL DEFAULT 'interactive'
    CHECK (kind IN ('interactive', 'standing'));

-- The catalog's usage definitions (event names, metric conditions) were accepted and never
-- applied: use is what devices report under the feature's key. Any that were set are kept in
-- the description, so nothing a user typed is lost.
UPDATE features SET description = left(concat_ws(E'\n', description,
    'Usage definitions kept from before they were removed (fieldtrack counts usage events '
    || 'reported under the feature key): events ' || array_to_string(usage_events, ', ')
    || '; metric conditions ' || usage_metrics::text), 5000)  -- the API's limit for it
WHERE usage_events <> '{}' OR usage_metrics <> '[]';
ALTER TABLE features DROP COLUMN usage_events, DROP COLUMN usage_metrics;

-- Which features devices reported as enabled (telemetry's optional `enabled_features`), by
-- device, per UTC day (a bitmask of hours) and per month (a bitmask of days), like the usage
-- rollups of migration 0007. The key '*' marks that the device reported its list at all (an
-- empty list included): devices that never do are not counted as having a feature off.
-- Ingest ORs bits in, so a redelivered message changes nothing. The daily rows are the record
-- (the lists are not kept raw); the monthly ones follow from them.
CREATE TABLE enabled_daily (
    project_id   bigint NOT NULL,
    day          date NOT NULL,
    feature_key  text NOT NULL,
    device_id    bigint NOT NULL,
    hours        integer NOT NULL,
    PRIMARY KEY (project_id, day, feature_key, device_id)
);
CREATE TABLE enabled_monthly (
    project_id   bigint NOT NULL,
    month        date NOT NULL,
    feature_key  text NOT NULL,
    device_id    bigint NOT NULL,
    days         integer NOT NULL,
    PRIMARY KEY (project_id, month, feature_key, device_id)
);

-- The rebuild recomputes the month rows of what was enabled from the day rows too.
CREATE OR REPLACE FUNCTION enabled_from_daily(since timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    from_day date := (date_trunc('month', coalesce(since, '-infinity'), 'UTC') AT TIME ZONE 'UTC')::date;
BEGIN
    DELETE FROM enabled_monthly WHERE month >= from_day;
    INSERT INTO enabled_monthly (project_id, month, feature_key, device_id, days)
    SELECT project_id, date_trunc('month', day::timestamp)::date, feature_key, device_id,
           bit_or(1 << (extract(day FROM day)::integer - 1))
    FROM enabled_daily WHERE day >= from_day GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4;
END;
$$;
