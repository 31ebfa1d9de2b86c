"""The durable queue: accepted messages live here until every recipient has a final result."""
