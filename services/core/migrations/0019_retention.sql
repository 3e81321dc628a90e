-- Retention of raw rows (services/ingest/retention.py): a project's raw usage events, metric
-- samples and status history are deleted once older than its `retention_days` (NULL: the
-- default, FIELDTRACK_RAW_RETENTION_DAYS); the rollups the analytics read are kept.

-- How far back each project's raw rows may be gone: the retention job records a cutoff here
-- before it deletes anything older, so an interrupted run is covered too. The rollup rebuild
-- refuses to start before the latest of them: it would recompute rollups from rows that are
-- no longer there.
CREATE TABLE raw_retention (
    project_id      bigint PRIMARY KEY REFERENCES projects (id),
    deleted_before  timestamptz NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now()
);

-- The job deletes one project's status history at a time, in batches; without this each batch
-- would scan every device's rows.
CREATE INDEX device_status_history_project_at ON device_status_history (project_id, at);
