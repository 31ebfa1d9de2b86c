"""The scheduler relaying through the real remote agent to an independent MTA (aiosmtpd on
loopback), killed with SIGKILL while it works: relayed messages leave the spool without a state
log (qmgr/scheduler.py), so this checks that nothing acknowledged is lost and that only the
messages in flight at the kill can reach the peer twice (RFC 5321 §6.1)."""

from __future__ import annotations

import collections
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mail_peers import free_port, start_peer
from postoffice.delivery.dns import MxResolver
from postoffice.delivery.remote import RemoteAgent, RemoteSettings
from postoffice.qmgr.scheduler import Scheduler
from postoffice.spool.envelope import Route
from postoffice.spool.files import FileSpool

pytestmark = pytest.mark.timeout(60)

CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from postoffice.delivery.dns import MxResolver
    from postoffice.delivery.remote import RemoteAgent, RemoteSettings
    from postoffice.qmgr.scheduler import Scheduler
    from postoffice.spool.envelope import Envelope, Recipient, Route
    from postoffice.spool.files import FileSpool

    async def main(root, port):
        spool = FileSpool(root / "spool")
        settings = RemoteSettings(hostname="mx.example.com", relay=("127.0.0.1", port), relay_tls="none")
        agents = {Route.REMOTE: RemoteAgent(settings, MxResolver(), spool)}
        # As the server runs it.
        scheduler = Scheduler(spool, agents, recovers_copies=(Route.LOCAL,), blocking=spool.io.run)
        await scheduler.start()
        recipient = Recipient("rcpt@remote.example", "rcpt@remote.example", Route.REMOTE)
        while True:
            writer = spool.put(Envelope("s@example.org", (recipient,), received_at=1.0))
            writer.write(b"Subject: " + writer.queue_id.encode() + b"\\r\\n\\r\\nbody\\r\\n")
            queued = await writer.commit()
            print(queued.queue_id, flush=True)  # acknowledged: from here on it must not be lost
            scheduler.submit(queued)
            await asyncio.sleep(0)

    asyncio.run(main(Path(sys.argv[1]), int(sys.argv[2])))
    """
)


def subjects(content: bytes) -> str:
    return content.split(b"\r\n", 1)[0].removeprefix(b"Subject: ").decode()


@pytest.mark.parametrize("kill_after", [5, 60])
async def test_sigkill_while_relaying_loses_no_acknowledged_message(tmp_path: Path, kill_after: int) -> None:
    port = free_port("127.0.0.1")
    peer = start_peer("127.0.0.1", port)
    try:
        child = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(tmp_path), str(port)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        acknowledged = [child.stdout.readline().strip() for _ in range(kill_after)]
        child.send_signal(signal.SIGKILL)
        acknowledged += [line.strip() for line in child.stdout.readlines() if line.strip()]
        child.wait()
        assert child.returncode == -signal.SIGKILL
        before = len(peer.received)

        spool = FileSpool(tmp_path / "spool")  # the restart
        settings = RemoteSettings(hostname="mx.example.com", relay=("127.0.0.1", port), relay_tls="none")
        agent = RemoteAgent(settings, MxResolver(), spool)
        scheduler = Scheduler(spool, {Route.REMOTE: agent})
        await scheduler.start()
        await scheduler.wait_idle()
        await scheduler.stop()
        await agent.close()

        assert spool.pending() == []
        counts = collections.Counter(subjects(message.content) for message in peer.received)
        for queue_id in acknowledged:
            assert counts[queue_id] >= 1, queue_id
        # Sent twice: only what the first run had relayed but not yet taken out of the spool,
        # at most one destination window of deliveries and the removals behind them.
        twice = [queue_id for queue_id, count in counts.items() if count > 1]
        assert len(twice) <= 2 * 20, (len(twice), before)
    finally:
        peer.stop()
