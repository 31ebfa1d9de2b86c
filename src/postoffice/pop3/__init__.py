"""The sans-I/O POP3 protocol (RFC 1939, CAPA RFC 2449, STLS RFC 2595, AUTH RFC 5034): bytes
in, events out, responses rendered to bytes. Stdlib only, like :mod:`postoffice.smtp`."""
