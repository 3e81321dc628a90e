"""`make bench`: fieldtrack measured against the ceilings of the machine it runs on.

Ingest: run.py and its phases; the analytics queries at 10 and 50 M events: queries.py.
"""
