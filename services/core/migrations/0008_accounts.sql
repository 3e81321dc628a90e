-- Accounts: people who log in, machine tokens, dashboard sessions.
-- Secrets are never stored: passwords as argon2id hashes, tokens and session ids as SHA-256
-- digests (they are 256-bit random values, so a fast digest is enough and keeps every
-- request cheap).
CREATE TABLE users (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    username       text NOT NULL CHECK (username ~ '^[a-z0-9][a-z0-9._@-]{1,63}$'),
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('admin', 'pm', 'ops', 'viewer')),
    -- a customer viewer sees exactly one customer; other roles see all
    customer_id    bigint REFERENCES customers (id),
    created_at     timestamptz NOT NULL DEFAULT now(),
    disabled_at    timestamptz,
    CHECK ((role = 'viewer') = (customer_id IS NOT NULL))
);
CREATE UNIQUE INDEX users_username_key ON users (username);

CREATE TABLE api_tokens (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    digest        bytea NOT NULL UNIQUE,
    -- the first characters of the token, so people can tell their tokens apart
    prefix        text NOT NULL,
    role          text NOT NULL CHECK (role IN ('admin', 'pm', 'ops', 'viewer')),
    customer_id   bigint REFERENCES customers (id),
    -- a personal token acts for its user and dies with them; a service token has no user
    user_id       bigint REFERENCES users (id) ON DELETE CASCADE,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz,
    revoked_at    timestamptz,
    last_used_at  timestamptz,
    CHECK ((role = 'viewer') = (customer_id IS NOT NULL))
);

CREATE TABLE sessions (
    digest        bytea PRIMARY KEY,
    user_id       bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_token    text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL
);
CREATE INDEX sessions_user_idx ON sessions (user_id);

-- Object-level scoping needs the customer of every delivery and device.
CREATE OR REPLACE VIEW delivery_details AS
SELECT dl.id, dl.project_id, dl.feature_id, f.key AS feature_key, f.name AS feature_name,
       dl.status, dl.delivered_on, dl.cost_person_days, dl.contract_line_value,
       dl.business_score, dl.strategic, dl.notes, dl.created_at, p.customer_id
FROM deliveries dl JOIN features f ON f.id = dl.feature_id JOIN projects p ON p.id = dl.project_id;

CREATE OR REPLACE VIEW device_details AS
SELECT d.id, d.serial, d.project_id, d.model, d.firmware, d.site, d.tags, d.status,
       s.online, s.last_seen, d.created_at, d.revoked_at, p.customer_id
FROM devices d JOIN projects p ON p.id = d.project_id
LEFT JOIN device_state s ON s.device_id = d.id;
