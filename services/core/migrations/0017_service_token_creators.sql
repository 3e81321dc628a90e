-- Service tokens end with the admin who made them, and people who logged in recently from an
-- address keep logging in while it is blocked for failures on other accounts.

-- The user whose request made a service token (through a service token: that token's own
-- creator). services/accounts/store.py revokes a user's service tokens when their role
-- changes or they are disabled or deleted, and the token lookup refuses a service token whose
-- creator is no longer an enabled admin. No foreign key: the id is kept, for the record,
-- after the user is deleted (identity ids are never reused), and a missing creator is no
-- admin. NULL: made by an operator with database access (`fieldtrack tokens create`) or
-- before creators were recorded; those are left as they are.
ALTER TABLE api_tokens ADD COLUMN created_by bigint;
ALTER TABLE api_tokens ADD CONSTRAINT api_tokens_created_by_service_check
    CHECK (created_by IS NULL OR user_id IS NULL);
CREATE INDEX api_tokens_created_by_idx ON api_tokens (created_by) WHERE created_by IS NOT NULL;

-- (username, address group) pairs whose last right password is recent (services/accounts/
-- throttle.py): such a pair is not refused by its address's block, only by its own. Rows come
-- from right passwords only, so no flood of guesses can grow the table; old ones are purged a
-- few at a time, oldest first.
CREATE TABLE login_successes (
    key           text PRIMARY KEY,
    last_success  timestamptz NOT NULL
);
CREATE INDEX login_successes_last_success_idx ON login_successes (last_success);
