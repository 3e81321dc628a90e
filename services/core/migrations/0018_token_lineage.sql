-- Tokens made with a token end with it: `parent_id` is the token a request came with when it
-- made this one (NULL: made with a password, a session or database access). Revoking a token
-- revokes its descendants (services/accounts/store.py), and the token lookup refuses a token
-- whose parent is revoked. No foreign key: tokens are never deleted, and ids are not reused.
ALTER TABLE api_tokens ADD COLUMN parent_id bigint;
CREATE INDEX api_tokens_parent_idx ON api_tokens (parent_id) WHERE parent_id IS NOT NULL;

-- Every token expires, within 365 days. Tokens from before that was required: one without
-- an expiry gets the default 90 days (a revoked one its revocation time), one beyond the
-- maximum the maximum; and the column is required from now on.
UPDATE api_tokens
SET expires_at = CASE WHEN revoked_at IS NOT NULL THEN coalesce(expires_at, revoked_at)
                      WHEN expires_at IS NULL THEN now() + interval '90 days'
                      ELSE now() + interval '365 days'
                 END
WHERE expires_at IS NULL OR (revoked_at IS NULL AND expires_at > now() + interval '365 days');
ALTER TABLE api_tokens ALTER COLUMN expires_at SET NOT NULL;
