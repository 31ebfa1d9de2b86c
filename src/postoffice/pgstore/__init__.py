"""A cluster's stores in the shared PostgreSQL database (:mod:`postoffice.pg`), each behind the
seam the embedded one implements: the queue (:class:`~postoffice.storage.MessageStore`), the
mailboxes (:class:`~postoffice.storage.MailboxStore`) and the accounts. Several nodes use them
at once; what one node stores, every node sees."""
