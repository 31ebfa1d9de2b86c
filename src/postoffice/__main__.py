"""``python -m postoffice`` runs the command-line interface."""

from postoffice.cli import main

raise SystemExit(main())
