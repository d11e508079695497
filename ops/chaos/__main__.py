"""`python -m ops.chaos --seed N --duration S ...`: one seeded chaos run (see `ops.chaos.run`)."""

from __future__ import annotations

import sys

from ops.chaos.run import main

sys.exit(main())
