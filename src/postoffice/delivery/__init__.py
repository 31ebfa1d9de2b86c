"""Delivery agents: local Maildir delivery and (later) remote SMTP delivery."""
