-- Garbage should be cheap to turn away (issue #9: a 10 % share may slow valid ingest by at
-- most 10 %), and each quarantined message costs the database a row plus one entry in every
-- index. The two btrees (received_at; reason, received_at) cost about 6 µs of a row's 15
-- (COPY of 20,000 garbage rows, same run). Rows arrive in time order, so a BRIN index finds a
-- time window almost as well for next to nothing; the list is ordered by id (the order the
-- messages were quarantined), which the primary key serves, and a reason is a filter.
DROP INDEX IF EXISTS quarantine_received;
DROP INDEX IF EXISTS quarantine_reason;
CREATE INDEX quarantine_received ON quarantine USING brin (received_at)
    WITH (autosummarize = on);
