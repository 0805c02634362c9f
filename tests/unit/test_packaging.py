"""The Debian packaging's sources agree with the project: one version, one packaged configuration.

The package itself is built and exercised in tests/package/test_deb.py
(root, containers); these checks need nothing but the checkout.
"""

from __future__ import annotations

import re
import tomllib

from ipspool import __version__
from ipspool.config import load_config
from tests.support.daemon import REPO

DEBIAN = REPO / "debian"
PACKAGED = REPO / "systemd" / "ipspool.toml"


def test_debian_changelog_names_the_version_ipspool_reports() -> None:
    """The top entry of debian/changelog is ipspool.__version__, revision 1 or later."""
    top = (DEBIAN / "changelog").read_text().splitlines()[0]
    found = re.match(r"ipspool \((?P<upstream>[^-)]+)-(?P<revision>[0-9]+)\) ", top)
    assert found is not None, top
    assert found["upstream"] == __version__


def test_pyproject_reads_the_version_from_the_package() -> None:
    """pyproject declares the version dynamic, from ipspool.__version__: no second copy to forget."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "ipspool.__version__"}


def test_the_unit_sysusers_and_tmpfiles_files_are_the_ones_in_systemd() -> None:
    """debian/ipspool.{service,sysusers,tmpfiles} are links to systemd/: debhelper installs the one source."""
    for name in ("service", "sysusers", "tmpfiles"):
        link = DEBIAN / f"ipspool.{name}"
        assert link.is_symlink(), link
        assert link.resolve() == (REPO / "systemd" / f"ipspool.{name}").resolve()


def test_the_conffile_is_systemd_ipspool_toml_and_holds_only_packaged_values() -> None:
    """debian/ipspool.install installs systemd/ipspool.toml as the conffile; it sets the few values systemd needs."""
    install = (DEBIAN / "ipspool.install").read_text().splitlines()
    assert "systemd/ipspool.toml etc/ipspool/" in install
    packaged = tomllib.loads(PACKAGED.read_text())
    assert packaged == {
        "spool": {"dir": "/var/spool/ipspool", "runtime_dir": "/run/ipspool", "producer_group": "ipspool-submit"},
        "log": {"format": "json"},
    }
    config = load_config(PACKAGED)
    assert str(config.spool.runtime_dir) == "/run/ipspool"
    assert "config/ipspool.toml" in (DEBIAN / "ipspool.examples").read_text().split()
    assert "etc/ipspool/conf.d" in (DEBIAN / "ipspool.dirs").read_text().split()


def test_the_values_the_conffile_sets_match_the_unit_and_the_tmpfiles_file() -> None:
    """spool.dir is the unit's ReadWritePaths= and the tmpfiles root; runtime_dir is RuntimeDirectory=."""
    packaged = tomllib.loads(PACKAGED.read_text())["spool"]
    unit = (REPO / "systemd" / "ipspool.service").read_text()
    assert f"ReadWritePaths={packaged['dir']}" in unit.splitlines()
    assert f"RuntimeDirectory={packaged['runtime_dir'].removeprefix('/run/')}" in unit.splitlines()
    tmpfiles = (REPO / "systemd" / "ipspool.tmpfiles").read_text()
    assert re.search(rf"^d\s+{re.escape(packaged['dir'])}\s+\S+\s+ipspool\s+{packaged['producer_group']}\s",
                     tmpfiles, re.MULTILINE)


def test_the_maintainer_scripts_are_debhelpers_own() -> None:
    """No hand-written postinst/prerm/postrm: debhelper generates them, so purge runs no rm -rf of /etc/ipspool."""
    for script in ("postinst", "prerm", "postrm", "preinst"):
        assert not (DEBIAN / script).exists(), script
        assert not (REPO / "packaging" / "debian" / script).exists(), script
    rules = (DEBIAN / "rules").read_text()
    assert "rm -rf /etc" not in rules
