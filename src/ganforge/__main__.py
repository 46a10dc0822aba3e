"""`python -m ganforge` is the `ganforge` command."""

from ganforge.cli import main

raise SystemExit(main())
