"""Mail authentication checks: SPF, DKIM, DMARC, ARC, each usable alone and tested against published vectors and independent implementations."""
