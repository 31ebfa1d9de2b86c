"""The shared PostgreSQL database of a cluster of postoffice nodes (``[storage] backend =
"postgresql"``): connections (:mod:`~postoffice.pg.database`) and the versioned schema
(:mod:`~postoffice.pg.migrate`, one module per version in :mod:`postoffice.pg.migrations`).

The stores built on it (the queue, the mailboxes, the accounts) implement the seams of
:mod:`postoffice.storage` and :mod:`postoffice.accounts` and live above, in
:mod:`postoffice.pgstore`. psycopg is imported only when a database is used, so the embedded
default neither needs nor loads it.
"""
