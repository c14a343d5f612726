"""``python -m mamllib``: the command line (:mod:`mamllib.cli`)."""

from mamllib.cli import main

raise SystemExit(main())
