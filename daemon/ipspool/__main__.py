from __future__ import annotations

from ipspool.cli import main

raise SystemExit(main())
