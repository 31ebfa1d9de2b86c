"""Sending mail: an asyncio SMTP client over :mod:`postoffice.smtp.client`, and the tools on it."""
