"""The web side of postoffice: a mailbox index, a JSON API and a browser UI over the Maildirs.

Untrusted input seen here: every HTTP request (paths, query strings, JSON bodies, cookies,
headers) and the content of every delivered message (headers, bodies, HTML, attachments).
The Maildirs stay the truth; the SQLite index is a cache that ``postoffice reindex`` rebuilds.
"""
