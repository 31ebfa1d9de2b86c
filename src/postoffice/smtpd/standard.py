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
    inbound: Check | None = None,
) -> Stages:
    """Policy at MAIL and RCPT, our Received: field at data-start, the junk-command limit, the
    login throttle before AUTH when AUTH is offered, and ``inbound`` (SPF, DKIM, DMARC and ARC
    verification: it starts at MAIL and finishes at data-end) on the listeners that are not
    for submission."""
    verify = () if inbound is None or submission else (inbound,)
    return Stages(
        auth=() if authenticator is None else (LoginThrottle(authenticator),),
        mail=(SenderPolicy(policy, submission=submission), *verify),
        rcpt=(RecipientPolicy(policy),),
        data_start=(ReceivedField(hostname),),
        replied=(JunkCommands(junk_commands),),
    )
