"""Built-in enrichment stages: CIDR lists, reverse DNS and GeoIP.

Each module has a ``build(config) -> Stage`` that ``ipspool.pipeline`` imports
only when the stage is named in ``[pipeline] stages``, so a daemon that does not
use GeoIP never imports maxminddb. docs/enrichment.md describes the fields.
"""

from __future__ import annotations

__all__: list[str] = []
