"""Print config/ipspool.toml with the values the Debian package ships.

The packaged /etc/ipspool/ipspool.toml is the fully commented example with a
few values changed for systemd (docs/packaging.md); each change must hit
exactly one line, and the result must load with the same values, or the
build stops.
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

# (section, key, example line, packaged line)
CHANGES = (
    ("spool", "runtime_dir", 'runtime_dir = ""', 'runtime_dir = "/run/ipspool"'),
    ("spool", "producer_group", 'producer_group = ""', 'producer_group = "ipspool-submit"'),
)

HEADER = """\
# /etc/ipspool/ipspool.toml as installed by the ipspool Debian package: the
# example configuration with the values systemd needs (spool.runtime_dir is
# the unit's RuntimeDirectory=, spool.producer_group the group of
# /usr/lib/sysusers.d/ipspool.conf). dpkg keeps your edits across upgrades.
#
# Metrics are off: to feed node_exporter's textfile collector (package
# prometheus-node-exporter), set metrics.textfile to
# "/var/lib/prometheus/node-exporter/ipspool.prom", give the ipspool user
# write access to that directory, and add it to the unit with
# `systemctl edit ipspool`: [Service] ReadWritePaths=/var/lib/prometheus/node-exporter
#
"""


def packaged(text: str) -> str:
    for _section, _key, old, new in CHANGES:
        if text.count(old + "\n") != 1:
            raise SystemExit(f"packaged_config: expected one line {old!r} in the example configuration")
        text = text.replace(old + "\n", new + "\n")
    loaded = tomllib.loads(text)
    for section, key, _old, new in CHANGES:
        if loaded[section][key] != tomllib.loads(new)[key]:
            raise SystemExit(f"packaged_config: {section}.{key} did not take the packaged value")
    return HEADER + text


if __name__ == "__main__":
    sys.stdout.write(packaged(Path(sys.argv[1]).read_text(encoding="utf-8")))
