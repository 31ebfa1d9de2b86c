"""asyncio listeners and sessions that drive the sans-I/O SMTP core over TCP."""
