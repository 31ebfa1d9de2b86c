"""The stages every listener runs by default, built from the server's policy and limits.

Untrusted input seen here: none (composition only).

Further checks (SPF, DKIM and DMARC verification, a spam scanner, fault injection) are added
to these tuples by whoever builds the server; each is a small object with one ``check``
method (:class:`~postoffice.smtpd.stages.Check`).
"""

from __future__ import annotations

from postoffice.policy import Policy
from postoffice.smtpd.auth import Authenticator
from postoffice.smtpd.checks.limits import JunkCommands, LoginThrottle
from postoffice.smtpd.checks.policy import RecipientPolicy, SenderPolicy
from postoffice.smtpd.checks.trace import ReceivedField
from postoffice.smtpd.stages import Check, Stages


def standard_stages(
    *,
    policy: Policy,
    hostname: str,
    junk_commands: int,
    submission: bool,
    authenticator: Authenticator | None,
    signing: Check | None = None,
    inbound: Check | None = None,
    chaos: Check | None = None,
) -> Stages:
    """Policy at MAIL and RCPT, our Received: field at data-start, the junk-command limit, the
    login throttle before AUTH when AUTH is offered, ``inbound`` (SPF, DKIM, DMARC and ARC
    verification: it starts at MAIL and finishes at data-end, before the data-end stage's own
    checks) on the listeners that are not for submission, and ``signing`` (DKIM signatures on
    our users' mail, :class:`~postoffice.smtpd.checks.signing.DkimSigning`) last at data-end.
    ``chaos`` (fault injection, :mod:`postoffice.smtpd.chaos`) comes first in every stage a
    rule can name, so a rule decides before the policy does."""
    verify = () if inbound is None or submission else (inbound,)
    first: tuple[Check, ...] = () if chaos is None else (chaos,)
    return Stages(
        connect=first,
        helo=first,
        auth=(*first, *(() if authenticator is None else (LoginThrottle(authenticator),))),
        mail=(*first, SenderPolicy(policy, submission=submission), *verify),
        rcpt=(*first, RecipientPolicy(policy)),
        data_start=(*first, ReceivedField(hostname)),
        data_end=(*first, *(() if signing is None else (signing,))),
        replied=(JunkCommands(junk_commands),),
    )
