"""Sending mail: an asyncio SMTP client over :mod:`postoffice.smtp.client` (:mod:`.connection`).

The commands built on it (``send``, guided mode, ``sendmail``) are in :mod:`postoffice.cli`.
"""
