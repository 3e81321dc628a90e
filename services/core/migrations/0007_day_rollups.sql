-- Day- and month-grain rollups, so the analytics read a few thousand rows for any window
-- instead of one row per device, feature and hour (docs/analytics.md, "How it stays fast").
--
-- Distinct devices stay exact over any window: per device, a month row carries a bitmask of
-- the days (bit d-1: day d) and a day row a bitmask of the hours (bit h: UTC hour h) with use
-- or with messages. A window is read as whole UTC days from the month rows plus, at its
-- edges, the hours of at most two days from the day rows. Additive totals (events, messages,
-- missing) are kept per project at day and hour grain.
--
-- Ingest updates all of them in the same transaction as the raw rows, from the rows actually
-- inserted; `fieldtrack rollups rebuild` recomputes them from the raw rows.

-- Bits lo .. hi-1 set (0 <= lo, hi <= 62); empty when hi <= lo.
CREATE FUNCTION bit_range(lo integer, hi integer) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN CASE WHEN hi > lo THEN (1::bigint << hi) - (1::bigint << lo) ELSE 0 END;

CREATE FUNCTION bits_set(mask bigint) RETURNS integer
LANGUAGE sql IMMUTABLE PARALLEL SAFE
RETURN bit_count(mask::bit(64))::integer;

-- Which devices used which feature: per UTC day (hours bitmask) and per month (days bitmask).
CREATE TABLE usage_daily (
    project_id   bigint NOT NULL,
    day          date NOT NULL,
    feature_key  text NOT NULL,
    device_id    bigint NOT NULL,
    hours        integer NOT NULL,
    PRIMARY KEY (project_id, day, feature_key, device_id)
);
CREATE TABLE usage_monthly (
    project_id   bigint NOT NULL,
    month        date NOT NULL,
    feature_key  text NOT NULL,
    device_id    bigint NOT NULL,
    days         integer NOT NULL,
    PRIMARY KEY (project_id, month, feature_key, device_id)
);
-- Which devices reported (sent any stored message), per day and per month.
CREATE TABLE device_daily (
    project_id   bigint NOT NULL,
    day          date NOT NULL,
    device_id    bigint NOT NULL,
    hours        integer NOT NULL,
    PRIMARY KEY (project_id, day, device_id)
);
CREATE TABLE device_monthly (
    project_id   bigint NOT NULL,
    month        date NOT NULL,
    device_id    bigint NOT NULL,
    days         integer NOT NULL,
    PRIMARY KEY (project_id, month, device_id)
);
-- Events per project and feature; messages and sequence gaps per project.
CREATE TABLE feature_hourly (
    project_id   bigint NOT NULL,
    hour         timestamptz NOT NULL,
    feature_key  text NOT NULL,
    events       bigint NOT NULL,
    PRIMARY KEY (project_id, hour, feature_key)
);
CREATE TABLE feature_daily (
    project_id   bigint NOT NULL,
    day          date NOT NULL,
    feature_key  text NOT NULL,
    events       bigint NOT NULL,
    PRIMARY KEY (project_id, day, feature_key)
);
CREATE TABLE project_hourly (
    project_id   bigint NOT NULL,
    hour         timestamptz NOT NULL,
    messages     bigint NOT NULL,
    missing      bigint NOT NULL,
    PRIMARY KEY (project_id, hour)
);
CREATE TABLE project_daily (
    project_id   bigint NOT NULL,
    day          date NOT NULL,
    messages     bigint NOT NULL,
    missing      bigint NOT NULL,
    PRIMARY KEY (project_id, day)
);

-- Recompute the rollups above from usage_hourly and device_hourly, from the month that holds
-- `since` on (NULL: everything). Used by this migration's backfill and by the rebuild. Rows
-- are written in key order: a window's rows then sit together on disk.
CREATE FUNCTION rollups_from_hourly(since timestamptz) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    from_hour timestamptz := date_trunc('month', coalesce(since, '-infinity'), 'UTC');
    from_day date := (from_hour AT TIME ZONE 'UTC')::date;
BEGIN
    DELETE FROM usage_daily WHERE day >= from_day;
    DELETE FROM usage_monthly WHERE month >= from_day;
    DELETE FROM device_daily WHERE day >= from_day;
    DELETE FROM device_monthly WHERE month >= from_day;
    DELETE FROM feature_hourly WHERE hour >= from_hour;
    DELETE FROM feature_daily WHERE day >= from_day;
    DELETE FROM project_hourly WHERE hour >= from_hour;
    DELETE FROM project_daily WHERE day >= from_day;

    INSERT INTO usage_daily (project_id, day, feature_key, device_id, hours)
    SELECT project_id, (hour AT TIME ZONE 'UTC')::date, feature_key, device_id,
           bit_or(1 << extract(hour FROM hour AT TIME ZONE 'UTC')::integer)
    FROM usage_hourly WHERE hour >= from_hour GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4;
    INSERT INTO usage_monthly (project_id, month, feature_key, device_id, days)
    SELECT project_id, date_trunc('month', day)::date, feature_key, device_id,
           bit_or(1 << (extract(day FROM day)::integer - 1))
    FROM usage_daily WHERE day >= from_day GROUP BY 1, 2, 3, 4 ORDER BY 1, 2, 3, 4;
    INSERT INTO device_daily (project_id, day, device_id, hours)
    SELECT project_id, (hour AT TIME ZONE 'UTC')::date, device_id,
           bit_or(1 << extract(hour FROM hour AT TIME ZONE 'UTC')::integer)
    FROM device_hourly WHERE hour >= from_hour GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
    INSERT INTO device_monthly (project_id, month, device_id, days)
    SELECT project_id, date_trunc('month', day)::date, device_id,
           bit_or(1 << (extract(day FROM day)::integer - 1))
    FROM device_daily WHERE day >= from_day GROUP BY 1, 2, 3 ORDER BY 1, 2, 3;
    INSERT INTO feature_hourly (project_id, hour, feature_key, events)
    SELECT project_id, hour, feature_key, sum(events)
    FROM usage_hourly WHERE hour >= from_hour GROUP BY 1, 2, 3;
    INSERT INTO feature_daily (project_id, day, feature_key, events)
    SELECT project_id, (hour AT TIME ZONE 'UTC')::date, feature_key, sum(events)
    FROM feature_hourly WHERE hour >= from_hour GROUP BY 1, 2, 3;
    INSERT INTO project_hourly (project_id, hour, messages, missing)
    SELECT project_id, hour, sum(messages), sum(missing)
    FROM device_hourly WHERE hour >= from_hour GROUP BY 1, 2;
    INSERT INTO project_daily (project_id, day, messages, missing)
    SELECT project_id, (hour AT TIME ZONE 'UTC')::date, sum(messages), sum(missing)
    FROM project_hourly WHERE hour >= from_hour GROUP BY 1, 2;
END;
$$;

SELECT rollups_from_hourly(NULL);
