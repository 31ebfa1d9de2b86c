"""postoffice: a durable, standards-correct ESMTP mail server with per-user Maildirs."""

__version__ = "0.1.0"
