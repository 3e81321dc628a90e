-- What was delivered to whom: customers, projects, the feature catalog, deliveries, devices.
CREATE EXTENSION IF NOT EXISTS timescaledb;

CREATE TABLE customers (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 200),
    tier            text NOT NULL CHECK (tier IN ('head', 'waist', 'tail')),
    industry        text NOT NULL CHECK (length(industry) BETWEEN 1 AND 100),
    lifecycle_stage text NOT NULL DEFAULT 'onboarding'
                    CHECK (lifecycle_stage IN ('onboarding', 'adoption', 'expansion', 'renewal', 'at_risk')),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projects (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer_id     bigint NOT NULL REFERENCES customers (id),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    contract_value  numeric(14, 2) CHECK (contract_value >= 0),
    currency        char(3) NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$'),
    go_live_date    date,
    status          text NOT NULL DEFAULT 'delivering' CHECK (status IN ('delivering', 'live', 'ended')),
    retention_days  integer CHECK (retention_days > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (customer_id, name)
);

CREATE TABLE features (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key             text NOT NULL UNIQUE CHECK (key ~ '^[a-z][a-z0-9_.-]{0,63}$'),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    product_line    text,
    description     text,
    -- the usage-event names that count as use of this feature (default: its key)
    usage_events    text[] NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE deliveries (
    project_id          bigint NOT NULL REFERENCES projects (id),
    feature_id          bigint NOT NULL REFERENCES features (id),
    status              text NOT NULL DEFAULT 'delivered' CHECK (status IN ('delivered', 'planned', 'cut')),
    delivered_on        date,
    cost_person_days    numeric(8, 2) CHECK (cost_person_days >= 0),
    contract_line_value numeric(14, 2) CHECK (contract_line_value >= 0),
    business_score      smallint CHECK (business_score BETWEEN 1 AND 5),
    strategic           boolean NOT NULL DEFAULT false,
    notes               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (project_id, feature_id)
);

CREATE TABLE devices (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- the device's MQTT username, client id and topic level
    serial      text NOT NULL UNIQUE CHECK (serial ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
    project_id  bigint NOT NULL REFERENCES projects (id),
    model       text,
    firmware    text,
    site        text,
    tags        text[] NOT NULL DEFAULT '{}',
    status      text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'revoked')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX devices_project_idx ON devices (project_id);
