-- Serials in fieldtrack's reserved namespace (`fieldtrack`, `ingest`, `admin` and
-- `fieldtrack-*`, in any letter case: services/core/topics.py is_reserved_name) belong to
-- fieldtrack's own broker identities. Provisioning refuses them now, but a device registered
-- under one earlier could log in with ingest's client id and take its session over. Such
-- devices are revoked (their history stays, shown offline) and named in a warning; `fieldtrack
-- broker-setup` (run by `infra up` and docker-compose) removes their broker accounts.
DO $$
DECLARE
    revoked text;
BEGIN
    WITH reserved AS (
        UPDATE devices SET status = 'revoked', revoked_at = now()
        WHERE status = 'active'
          AND (lower(serial) IN ('fieldtrack', 'ingest', 'admin')
               OR lower(serial) LIKE 'fieldtrack-%')
        RETURNING id, serial
    ), offline AS (
        UPDATE device_state s SET online = false, online_since = now()
        FROM reserved r
        WHERE s.device_id = r.id AND s.online IS DISTINCT FROM false
    )
    SELECT string_agg(serial, ', ' ORDER BY serial) INTO revoked FROM reserved;
    IF revoked IS NOT NULL THEN
        RAISE WARNING 'revoked devices under serials reserved for fieldtrack''s own: %',
            revoked;
    END IF;
END
$$;
