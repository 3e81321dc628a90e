"""The NATS cluster's fieldtrack-side services: the auth callout that admits devices."""
