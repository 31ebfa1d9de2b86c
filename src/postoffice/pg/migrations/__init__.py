"""The database schema, one version per module: ``vNNNN_name.py`` holding ``SQL``, the
statements that take the schema from version NNNN-1 to NNNN. A module, once released, is never
changed: a change to the schema is a new version. :mod:`postoffice.pg.migrate` applies them."""
