-- Device credentials fieldtrack itself can check: with a NATS cluster as the broker, the auth
-- callout (services/broker/callout.py) verifies a device's MQTT password here instead of a
-- per-device entry in the broker's configuration, so provisioning and revocation cost the
-- same at any fleet size. Passwords are 24 random bytes, so a plain SHA-256 is enough: there
-- is nothing to guess that a slow hash would protect. Written on every provisioning and
-- rotation, whatever the broker, so a fleet can move to the cluster without new passwords
-- (devices provisioned before this table existed need one rotation).
CREATE TABLE device_credentials (
    device_id   bigint PRIMARY KEY REFERENCES devices (id) ON DELETE CASCADE,
    secret_hash bytea NOT NULL CHECK (length(secret_hash) = 32),
    rotated_at  timestamptz NOT NULL DEFAULT now()
);
