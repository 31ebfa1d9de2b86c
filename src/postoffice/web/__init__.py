"""HTTP interfaces of postoffice (operations endpoints; the mailbox UI and API)."""
