"""The durable queue's storage: accepted messages live here until every recipient has a final result.

Storage only: message files, their envelopes and state logs, queue IDs and the fsync machinery.
What is done with the queued mail (scheduling, retries, bounces, operator commands) is the queue
manager's, :mod:`postoffice.qmgr`, which imports this package and never the other way round.
"""
