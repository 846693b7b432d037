"""``python -m bta`` is the ``bta`` command."""

from bta.cli import main

raise SystemExit(main())
