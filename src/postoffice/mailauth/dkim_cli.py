"""``postoffice dkim generate|list|retire``: what the commands print, given parsed arguments.

Untrusted input seen here: the domain and selector the operator typed, which
:mod:`~postoffice.mailauth.dkim_keys` checks before they name a file.
"""

from __future__ import annotations

import sys
from typing import TextIO

from postoffice.mailauth import dkim_keys
from postoffice.mailauth.dkim_keys import KeyStore


def run_generate(
    store: KeyStore, domain: str, selector: str | None, algorithm: str, out: TextIO = sys.stdout
) -> int:
    """Make a key and print the TXT record to publish."""
    key = dkim_keys.generate(store, domain, selector, algorithm)
    print(
        f"made {key.algorithm}-{key.bits} key {key.location}; it signs mail from {key.domain} now.", file=out
    )
    print("Publish this TXT record in the domain's DNS zone:", file=out)
    print(key.zone_line(), file=out)
    return 0


def run_list(store: KeyStore, records: bool = False, out: TextIO = sys.stdout) -> int:
    """Every key, whether it signs, and (``records``) the TXT record each needs; 1 if a key
    file could not be read."""
    ring = store.ring()
    for key in ring.keys:
        state = "signs" if key.signing else "retired"
        print(f"{key.domain}  {key.selector}  {key.algorithm}-{key.bits}  {state}  {key.location}", file=out)
        if records:
            print(f"  {key.zone_line()}", file=out)
    for problem in ring.problems:
        print(f"postoffice: {problem}", file=sys.stderr)
    if not ring.keys and not ring.problems:
        print(f"no DKIM keys in {store.where}", file=out)
    return 1 if ring.problems else 0


def run_retire(store: KeyStore, domain: str, selector: str, out: TextIO = sys.stdout) -> int:
    """Stop signing with a key; its record can leave the DNS once mail it signed is delivered."""
    marker = store.retire(domain, selector)
    print(f"retired {selector} of {domain} ({marker}); remove its TXT record in a week or so", file=out)
    return 0
