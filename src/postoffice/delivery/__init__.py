"""Delivery agents: local delivery into the mailbox store, remote delivery over SMTP, and direct
delivery of a message for one local mailbox before the reply."""
