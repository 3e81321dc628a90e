"""`make bench`: fieldtrack measured against the ceilings of the machine it runs on (ingest: run.py and its phases; analytics queries at 10 and 50 M events: queries.py)."""
