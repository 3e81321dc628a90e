-- Quarantined payloads over ~2 KB are compressed as they are stored. PostgreSQL's default
-- (pglz) made a 5 KB garbage payload cost ~65 µs of the database's CPU, lz4 ~27 µs: garbage
-- should be cheap to turn away. Rows already stored keep their compression. A server built
-- without lz4 keeps pglz (same data, only slower).
DO $$
BEGIN
    ALTER TABLE quarantine ALTER COLUMN payload SET COMPRESSION lz4;
EXCEPTION WHEN feature_not_supported OR invalid_parameter_value THEN
    RAISE NOTICE 'lz4 is not available: quarantined payloads stay pglz-compressed';
END
$$;
