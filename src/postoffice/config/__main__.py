"""``python -m postoffice.config``: print the configuration reference (docs/config-reference.md).

Untrusted input seen here: none.
"""

from __future__ import annotations

import sys

from postoffice.config.reference import render

# Bytes, so the file is UTF-8 whatever the terminal's locale says.
sys.stdout.buffer.write(render().encode("utf-8"))
