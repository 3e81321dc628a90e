"""The quarantine: every message ingest could not store, kept with its reason and raw bytes.

`write` (the store and the imports quarantine through it), `purge` (retention), `read` (the
API's answers) and `replay` (offering quarantined messages to the store again).
"""
