"""`fieldtrack customers|projects|features|deliveries|devices|import`: the registry, via the API.

These commands are a client of the REST API (FIELDTRACK_API_URL, optional
FIELDTRACK_API_TOKEN), never of the database: they work from any machine that can reach the
API, and the API's checks apply to them as to every other client. A module per resource;
`crud.py` makes each resource's list, show and delete from its registry declaration and its
add and update from one table of options, and `common.py` holds what they share.
"""
