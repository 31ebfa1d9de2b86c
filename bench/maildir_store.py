"""The Maildir recipe a durable receiver follows before its 250, shared by the benchmark's peers.

Write ``tmp/NAME``, fsync it, rename it into ``new/``, fsync ``new/`` (the rename is durable
only once its directory is). Blocking: callers run it in worker threads.
"""

from __future__ import annotations

import os
from pathlib import Path


def store(root: Path, name: str, content: bytes) -> None:
    temporary = root / "tmp" / name
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(temporary, root / "new" / name)
    directory = os.open(root / "new", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
