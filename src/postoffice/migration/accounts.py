"""Users and aliases from one accounts store to another.

Untrusted input seen here: the source's users and aliases, as its store checked them; the
target store checks them again as it takes them. Password hashes are copied as they are (the
passwords are nobody's to know) and never printed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from postoffice.accounts import UserInfo, UserRecord
from postoffice.migration.tally import Progress, Tally


class AccountStore(Protocol):
    """What a migration needs of an accounts store (:class:`postoffice.accounts.Accounts`, or
    a cluster's in the database)."""

    def users(self) -> list[UserInfo]: ...

    def aliases(self) -> dict[str, list[str]]: ...

    def user_records(self) -> dict[str, UserRecord]:
        """Every user by address, with its password hash and admin flag."""
        ...

    def restore_user(self, address: str, record: UserRecord) -> None:
        """Make the user at ``address`` exactly ``record`` (added, or changed to it)."""

    def add_alias(self, alias: str, targets: Sequence[str]) -> str: ...


def copy_accounts(source: AccountStore, target: AccountStore, tally: Tally, progress: Progress) -> None:
    """Every user (hash and admin flag) and alias of ``source`` into ``target``; again, it
    changes nothing (an alias gains only the targets it lacks)."""
    records = source.user_records()
    for address, record in sorted(records.items()):
        target.restore_user(address, record)
    aliases = source.aliases()
    for alias, targets in aliases.items():
        target.add_alias(alias, targets)
    tally.users += len(records)
    tally.aliases += len(aliases)
    progress(f"accounts: {len(records)} users, {len(aliases)} aliases")
