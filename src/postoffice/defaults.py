"""The defaults that the configuration shares with the layers it configures, each with its precedent.

Untrusted input seen here: none; these are constants.

Why a module of its own: :mod:`postoffice.config` declares every key once (type, default, bounds,
help), but the sans-I/O protocol core may not import it (``smtp/`` stays free of files, the
environment and TOML, so it can be fuzzed with bytes alone), and the queue's scheduler and the
remote agent are built with defaults of their own for tests and tools. So the numbers they share
live here, imported by ``smtp.server.ServerSettings``, ``qmgr.scheduler.Scheduler``,
``delivery.remote.RemoteSettings`` and by config's schema, which adds the type, the bounds and
the help. This module imports nothing, so anything may import it.

A default that only the configuration uses is written in its schema (``config/tables.py``,
``config/model.py``).
"""

from __future__ import annotations

MiB = 1024 * 1024
DAY = 86400.0

# -- SMTP sessions: [limits] ------------------------------------------------------------------

# RFC 5321 §4.5.3.1.4: a command line is at most 512 octets including CRLF; a server must take
# that much, so it is the floor as well as the default.
COMMAND_LINE = 512
MIN_COMMAND_LINE = 512
# RFC 5321 §4.5.3.1.6: a text line is at most 1000 octets including CRLF (0 turns the check off).
TEXT_LINE = 1000
MIN_TEXT_LINE = 1000
# RFC 1870 SIZE; 25 MiB is what large providers accept today (Postfix message_size_limit: 10 MB).
MESSAGE_SIZE = 25 * MiB
# RFC 5321 §4.5.3.1.7: "The maximum total length of a message content ... MUST BE at least 64K
# octets."
MIN_MESSAGE_SIZE = 64 * 1024
# RFC 5321 §4.5.3.1.8 requires accepting at least 100; Postfix smtpd_recipient_limit is 1000.
RECIPIENTS = 1000
MIN_RECIPIENTS = 100
# Postfix smtpd_hard_error_limit = 20: after this many error replies, 421 and close.
ERRORS_PER_SESSION = 20

# -- The queue: [queue], in Postfix's names (postconf(5)) ------------------------------------

# First retry 5 minutes after a temporary failure (Postfix minimal_backoff_time = 300s).
MINIMAL_BACKOFF_TIME = 300.0
# The delay doubles up to this (Postfix maximal_backoff_time = 4000s, about 67 minutes).
MAXIMAL_BACKOFF_TIME = 4000.0
# Then the sender is told it failed (Postfix maximal_queue_lifetime = 5d; RFC 5321 §4.5.4.1:
# "the give-up time generally needs to be at least 4-5 days").
MAXIMAL_QUEUE_LIFETIME = 5 * DAY
# No "still trying" notice (Postfix delay_warning_time = 0h).
DELAY_WARNING_TIME = 0.0
# Deliveries at once, all destinations together. Postfix default_process_limit is 100
# processes; a job here is a coroutine and at most one connection. Local deliveries running
# together flush side by side, and the file system commits their flushes together, so under
# load this is also how many one disk flush covers.
CONCURRENCY = 64
# Postfix initial_destination_concurrency = 5: no site gets more parallel connections at first.
DESTINATION_CONCURRENCY = 5
# The most it grows to while the destination keeps answering (Postfix's
# default_destination_concurrency_limit): one more with each delivery that reached it.
DESTINATION_CONCURRENCY_LIMIT = 20

# -- Outbound SMTP: [delivery] ----------------------------------------------------------------

# RFC 5321 §2.3.5: mail exchangers listen on port 25.
MX_PORT = 25
# Towards a relay host: STARTTLS required (RFC 3207), the relay's certificate verified.
RELAY_TLS = "starttls"
# Postfix smtp_connect_timeout = 30s.
CONNECT_TIMEOUT = 30.0
# Each command's reply: RFC 5321 §4.5.3.2 asks a client to wait 5 minutes (MAIL, RCPT: 5; the
# end of DATA: 10, which the agent waits separately).
REPLY_TIMEOUT = 300.0
