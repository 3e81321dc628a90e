"""`make bench`: fieldtrack measured against the ceilings of the machine it runs on."""
