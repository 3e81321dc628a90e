-- Personal credentials that follow their user, and a login throttle shared by every API
-- process (issue 22, findings 2 and 8).

-- A user's credential generation: bumped (in services/accounts/store.py) whenever what their
-- credentials stand for changes: role, customer, password, disabled or enabled. A personal
-- token or a session is valid only while it carries the generation it was issued under, so
-- changing a user back (re-enabling, promoting again) never revives an older credential.
ALTER TABLE users ADD COLUMN auth_epoch integer NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN user_epoch integer NOT NULL DEFAULT 0;
ALTER TABLE sessions ALTER COLUMN user_epoch DROP DEFAULT;
ALTER TABLE api_tokens ADD COLUMN user_epoch integer;
UPDATE api_tokens SET user_epoch = 0 WHERE user_id IS NOT NULL;

-- Personal tokens minted before this migration copied a role and customer that may no longer
-- be their user's (a demoted admin's token), or belong to a disabled user: revoke them.
UPDATE api_tokens t SET revoked_at = now()
FROM users u
WHERE t.user_id = u.id AND t.revoked_at IS NULL
  AND (t.role <> u.role OR t.customer_id IS DISTINCT FROM u.customer_id
       OR u.disabled_at IS NOT NULL);

-- Personal tokens always expire, after at most 365 days: everlasting ones get the default of
-- 90 days from now, longer ones are cut to 365 days from now.
UPDATE api_tokens
SET expires_at = now() + CASE WHEN expires_at IS NULL THEN interval '90 days'
                              ELSE interval '365 days' END
WHERE user_id IS NOT NULL AND (expires_at IS NULL OR expires_at > now() + interval '365 days');

ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_personal_expire_check
    CHECK (user_id IS NULL OR (expires_at IS NOT NULL AND user_epoch IS NOT NULL));

-- Failed logins per (username, address) pair and per address. In the database so that every
-- API process counts the same failures and a flood of invented usernames cannot push a
-- victim's record out of a bounded in-memory table. Unlogged: it is rebuilt by failures
-- alone, so a crash that empties it costs nothing worth a WAL write per failed login.
CREATE UNLOGGED TABLE login_failures (
    key            text PRIMARY KEY,
    failures       integer NOT NULL CHECK (failures >= 0),
    blocked_until  timestamptz NOT NULL,
    last_failure   timestamptz NOT NULL
);
-- Old records are purged a few at a time, oldest first.
CREATE INDEX login_failures_last_failure_idx ON login_failures (last_failure);
