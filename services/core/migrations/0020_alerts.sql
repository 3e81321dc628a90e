-- Alerts: rules (data, validated by services/alerts/rules.py), the alerts they open, and an
-- outbox of the notifications each alert's transitions owe each channel.

-- Where notifications go: a webhook (JSON, signed with HMAC-SHA256 when it has a secret) or
-- email (comma-separated addresses). Quiet hours (UTC) hold notifications until they end.
CREATE TABLE alert_channels (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 100),
    kind        text NOT NULL CHECK (kind IN ('webhook', 'email')),
    target      text NOT NULL CHECK (length(target) BETWEEN 1 AND 2000),
    secret      text,
    quiet_start time,
    quiet_end   time,
    enabled     boolean NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CHECK ((quiet_start IS NULL) = (quiet_end IS NULL))
);

-- A rule with project_id NULL is the portfolio-wide default of its kind: it applies to every
-- project (new ones included) that has no rule of that kind of its own.
CREATE TABLE alert_rules (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL,
    project_id  bigint REFERENCES projects (id) ON DELETE CASCADE,
    params      jsonb NOT NULL DEFAULT '{}',
    enabled     boolean NOT NULL DEFAULT true,
    channels    bigint[] NOT NULL DEFAULT '{}',
    updated_by  text,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (kind, project_id)
);

-- One open alert per kind × subject, whichever rule (the default or the project's own) it
-- comes under now: a unique index the evaluator's INSERT … ON CONFLICT relies on, so two
-- evaluators (or one restarted) never open the same alert twice, and replacing a default
-- by a project's rule keeps the alert. Deleting a rule keeps its alerts' history.
CREATE TABLE alerts (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_id          bigint REFERENCES alert_rules (id) ON DELETE SET NULL,
    kind             text NOT NULL,
    project_id       bigint REFERENCES projects (id) ON DELETE CASCADE,
    subject          text NOT NULL,
    state            text NOT NULL CHECK (state IN ('firing', 'acknowledged', 'resolved')),
    summary          text NOT NULL,
    evidence         jsonb NOT NULL DEFAULT '{}',
    fired_at         timestamptz NOT NULL,
    acknowledged_at  timestamptz,
    acknowledged_by  text,
    resolved_at      timestamptz,
    -- cleared: the condition stayed clear for the hold time; rule off: no enabled rule
    -- watches it any more; project ended: its project ended
    resolution       text CHECK (resolution IN ('cleared', 'rule off', 'project ended')),
    -- since when the condition has been clear (NULL: it holds); the alert resolves once this
    -- is older than the hold time, so one good reading in a bad spell does not close it
    clear_since      timestamptz,
    updated_at       timestamptz NOT NULL
);
CREATE UNIQUE INDEX alerts_one_open ON alerts (kind, subject) WHERE state <> 'resolved';
CREATE INDEX alerts_recent ON alerts (fired_at DESC);
CREATE INDEX alerts_project ON alerts (project_id, fired_at DESC);

-- The outbox: written in the transaction that opens or resolves an alert, delivered after.
-- One row per alert × event × channel, so a restart never owes a notification twice.
CREATE TABLE alert_notifications (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_id         bigint NOT NULL REFERENCES alerts (id) ON DELETE CASCADE,
    event            text NOT NULL CHECK (event IN ('fired', 'resolved')),
    channel_id       bigint NOT NULL REFERENCES alert_channels (id) ON DELETE CASCADE,
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'sent', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    sent_at          timestamptz,
    UNIQUE (alert_id, event, channel_id)
);
CREATE INDEX alert_notifications_due ON alert_notifications (next_attempt_at)
    WHERE state = 'pending';

-- The defaults every project gets (services/alerts/rules.py documents each parameter).
INSERT INTO alert_rules (kind, params, updated_by) VALUES
    ('device_silent', '{}', 'default'),
    ('project_silent', '{}', 'default'),
    ('devices_offline', '{}', 'default'),
    ('quarantine_rate', '{}', 'default'),
    ('completeness_low', '{}', 'default'),
    ('ingest_lag', '{}', 'default'),
    ('adoption_drop', '{}', 'default');
