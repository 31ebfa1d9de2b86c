"""The sans-I/O SMTP protocol: bytes in, events out, replies rendered to bytes. Stdlib only."""
