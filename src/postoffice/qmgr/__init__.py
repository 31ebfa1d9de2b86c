"""The queue manager: what happens to mail once it is durable in the spool.

After Postfix's qmgr(8), bounce(8) and postsuper(1): the scheduler hands spooled messages to
delivery agents and retries what failed, the bouncer tells senders what became of their mail
(RFC 3464), and the admin functions let an operator list, hold, release and delete.

It sits above the storage (:mod:`postoffice.spool`) and the agent protocol
(:mod:`postoffice.delivery.agent`); the concrete agents are injected by the composition root
(:mod:`postoffice.app`), so nothing here imports them, the network or the web side.
"""
