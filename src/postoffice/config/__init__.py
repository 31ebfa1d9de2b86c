"""Frozen, typed settings for postoffice, loaded from TOML.

Untrusted input seen here: the configuration file and command-line overrides, written by the
operator. A mistake is reported as one :class:`~postoffice.errors.ConfigError` line naming the
file and the key, never as a traceback.

The package, by concept:

- :mod:`~postoffice.config.tables` and :mod:`~postoffice.config.model`: the schema. Each key is
  declared once, as a dataclass field with its type, default, floor, ceiling and one line of
  help; ``model.SECTIONS`` maps the TOML tables onto the dataclasses.
- :mod:`~postoffice.config.schema`: how a key is declared (``Key``, ``Kind``, ``setting()``).
- :mod:`~postoffice.config.kinds`, :mod:`~postoffice.config.values`,
  :mod:`~postoffice.config.names`: the kinds of value and their readers.
- :mod:`~postoffice.config.loader`: :func:`load_config` and :func:`check_config`.
- :mod:`~postoffice.config.reference`: writes ``docs/config-reference.md`` from the schema
  (``python -m postoffice.config > docs/config-reference.md``).

``examples/postoffice.toml`` shows a file with every key; the reference lists them with their
defaults.
"""

from __future__ import annotations

import dataclasses

from postoffice.addresses import normalize_address, normalize_domain
from postoffice.config.kinds import LOG_FORMATS, RELAY_TLS_MODES, TLS_POLICIES, TLS_VERSIONS
from postoffice.config.listen import ProxyProtocol
from postoffice.config.loader import Overrides, check_config, load_config
from postoffice.config.model import Config, default_data_dir, default_hostname, local_socket_path
from postoffice.config.names import (
    DEFAULT_HTTP_LISTENER,
    DEFAULT_SMTP_LISTENER,
    LISTENER_KINDS,
    POP3_LISTENER_KINDS,
    Listener,
    parse_dns_server,
    parse_hostport,
    parse_relay_host,
)
from postoffice.config.storage import StorageSettings
from postoffice.config.tables import (
    AcmeSettings,
    AuthConfig,
    AuthenticationSettings,
    DeliverySettings,
    Limits,
    QueueSettings,
    RetentionSettings,
    TLSConfig,
    Webhook,
)
from postoffice.config.values import (
    MAX_WORKERS,
    maildir_directory_mode,
    parse_duration,
    parse_size,
    usable_cores,
)
from postoffice.defaults import DAY, MiB

LIMIT_NAMES = tuple(item.name for item in dataclasses.fields(Limits))
QUEUE_NAMES = tuple(item.name for item in dataclasses.fields(QueueSettings))

__all__ = [
    "DAY",
    "DEFAULT_HTTP_LISTENER",
    "DEFAULT_SMTP_LISTENER",
    "LIMIT_NAMES",
    "LISTENER_KINDS",
    "LOG_FORMATS",
    "MAX_WORKERS",
    "POP3_LISTENER_KINDS",
    "QUEUE_NAMES",
    "RELAY_TLS_MODES",
    "TLS_POLICIES",
    "TLS_VERSIONS",
    "AcmeSettings",
    "AuthConfig",
    "AuthenticationSettings",
    "Config",
    "DeliverySettings",
    "Limits",
    "Listener",
    "MiB",
    "Overrides",
    "ProxyProtocol",
    "QueueSettings",
    "RetentionSettings",
    "StorageSettings",
    "TLSConfig",
    "Webhook",
    "check_config",
    "default_data_dir",
    "default_hostname",
    "load_config",
    "local_socket_path",
    "maildir_directory_mode",
    "normalize_address",
    "normalize_domain",
    "parse_dns_server",
    "parse_duration",
    "parse_hostport",
    "parse_relay_host",
    "parse_size",
    "usable_cores",
]
