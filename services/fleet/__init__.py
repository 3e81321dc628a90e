"""Fleet and ingest health for ops: SQL over the rollups, and ingest's Prometheus metrics."""
