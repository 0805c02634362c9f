#!/usr/bin/env bash
# Build packaging/out/ipspool_VERSION_ARCH.deb: a self-contained virtualenv in
# /usr/lib/ipspool on Debian 12's own python3, plus the unit, sysusers.d and
# tmpfiles.d files, the packaged configuration, ipspool(8) and bash and zsh completion.
# What goes where, and why: docs/packaging.md.
#
#   packaging/build-deb.sh              version from pyproject.toml, revision 1
#   IPSPOOL_DEB_VERSION=0.1.0-2 packaging/build-deb.sh
#
# No debhelper, no chroot, no root: the virtualenv is built in a staging
# directory with /usr/bin/python3 (the interpreter it will run on), then the
# staging path is rewritten to /usr/lib/ipspool in the few text files that name
# it, and the build fails if any file still does. pip's cache makes repeated
# builds fast; nothing is fetched at install time.
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "$0")/.." && pwd)
PKG=$REPO/packaging
OUT=${IPSPOOL_DEB_OUT:-$PKG/out}
PYTHON=/usr/bin/python3          # Debian's interpreter: the venv points at it
# Not /opt: lintian rejects every file there (dir-or-file-in-opt, FHS).
PREFIX=/usr/lib/ipspool          # where the venv lives on the target

die() { echo "build-deb: $*" >&2; exit 1; }

command -v dpkg-deb >/dev/null || die "dpkg-deb not found (apt-get install dpkg)"
[ -x "$PYTHON" ] || die "$PYTHON not found (apt-get install python3 python3-venv)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || die "$PYTHON is $("$PYTHON" --version); the package is built for Debian 12's python3 3.11"
"$PYTHON" -c 'import ensurepip' 2>/dev/null || die "python3 has no venv support (apt-get install python3-venv)"

upstream=$("$PYTHON" -c 'import tomllib, sys; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' \
    "$REPO/pyproject.toml")
VERSION=${IPSPOOL_DEB_VERSION:-$upstream-1}
case "$VERSION" in "$upstream"-*) ;; *) die "IPSPOOL_DEB_VERSION=$VERSION does not start with $upstream-";; esac
ARCH=$(dpkg --print-architecture)
DEB=$OUT/ipspool_${VERSION}_${ARCH}.deb
STAGE=$OUT/stage/ipspool_${VERSION}_${ARCH}
VENV=$STAGE$PREFIX

started=$(date +%s)
echo "build-deb: ipspool $VERSION ($ARCH) in $STAGE"
rm -rf "$STAGE"
mkdir -p "$STAGE/DEBIAN" "$OUT"

# -- the virtualenv ---------------------------------------------------------
# Symlinked interpreter (not --copies): bin/python3 -> /usr/bin/python3, so
# the venv runs on the target's python3 and its standard library, which are
# what Depends: python3 (>= 3.11), python3 (<< 3.12) provide.
"$PYTHON" -m venv "$VENV"
# pip builds in the source tree (build/, *.egg-info): give it a private copy,
# so concurrent builds cannot collide and the checkout stays clean.
SRC=$OUT/src/ipspool_${VERSION}_${ARCH}
rm -rf "$SRC" && mkdir -p "$SRC"
cp -r "$REPO/pyproject.toml" "$REPO/README.md" "$REPO/daemon" "$SRC/"
find "$SRC" \( -name '*.egg-info' -o -name __pycache__ \) -prune -exec rm -rf {} +
"$VENV/bin/python3" -m pip install --quiet --disable-pip-version-check --no-compile \
    --no-warn-script-location "$SRC"
rm -rf "$SRC"
"$VENV/bin/python3" -m pip uninstall --quiet --yes pip setuptools
# Only the interpreter links stay in bin/: the command is /usr/bin/ipspool
# (below), and console scripts with a #!/usr/lib/ipspool/bin/python3 line are
# what lintian's wrong-path-for-interpreter rejects.
find "$VENV/bin" -mindepth 1 ! -name 'python*' -delete
rmdir "$VENV/include/python3.11" "$VENV/include"
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +
# direct_url.json records the build machine's checkout; nothing needs it.
find "$VENV/lib" -path '*.dist-info/direct_url.json' -delete
# pyvenv.cfg records the command that made it, with the staging path.
sed -i "s|$VENV|$PREFIX|g" "$VENV/pyvenv.cfg"
if leftovers=$(grep -rlF "$STAGE" "$STAGE" 2>/dev/null); then
    die "files still name the staging directory: $leftovers"
fi
if command -v strip >/dev/null; then
    find "$VENV/lib" -name '*.so*' -type f -exec strip --strip-unneeded {} +
fi
# Extension modules are loaded, not run: 0644 like Debian's own python3-* packages.
find "$VENV/lib" -name '*.so*' -type f -exec chmod 644 {} +

# -- files around it --------------------------------------------------------
# -I (isolated): neither the working directory nor PYTHON* variables can
# change what the command imports.
install -d "$STAGE/usr/bin"
printf '#!/bin/sh\nexec %s/bin/python3 -I -m ipspool "$@"\n' "$PREFIX" > "$STAGE/usr/bin/ipspool"
chmod 755 "$STAGE/usr/bin/ipspool"

install -D -m 644 "$REPO/systemd/ipspool.service" "$STAGE/lib/systemd/system/ipspool.service"
install -D -m 644 "$REPO/systemd/ipspool.sysusers" "$STAGE/usr/lib/sysusers.d/ipspool.conf"
install -D -m 644 "$REPO/systemd/ipspool.tmpfiles" "$STAGE/usr/lib/tmpfiles.d/ipspool.conf"
install -D -m 755 "$REPO/systemd/ipspool-generator" "$STAGE/usr/lib/systemd/system-generators/ipspool-generator"

install -d "$STAGE/etc/ipspool"
"$VENV/bin/python3" "$PKG/packaged_config.py" "$REPO/config/ipspool.toml" > "$STAGE/etc/ipspool/ipspool.toml"
chmod 644 "$STAGE/etc/ipspool/ipspool.toml"

# ipspool(8) and the completion come from the same argparse parser as --help.
install -d "$STAGE/usr/share/man/man8" "$STAGE/usr/share/bash-completion/completions" \
    "$STAGE/usr/share/zsh/vendor-completions"
SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || date +%s)}
export SOURCE_DATE_EPOCH
"$VENV/bin/python3" -m ipspool.tools.manpage | gzip -9n > "$STAGE/usr/share/man/man8/ipspool.8.gz"
"$VENV/bin/python3" -m ipspool.tools.completion bash > "$STAGE/usr/share/bash-completion/completions/ipspool"
"$VENV/bin/python3" -m ipspool.tools.completion zsh > "$STAGE/usr/share/zsh/vendor-completions/_ipspool"
find "$VENV" -name __pycache__ -type d -prune -exec rm -rf {} +

DOC=$STAGE/usr/share/doc/ipspool
install -d "$DOC"
install -m 644 "$REPO/README.md" "$REPO"/docs/*.md "$DOC/"
install -m 644 "$REPO/config/ipspool.toml" "$DOC/ipspool.toml.example"
"$VENV/bin/python3" "$PKG/copyright.py" "$VENV" "$PREFIX" > "$DOC/copyright"
{
    echo "ipspool ($VERSION) unstable; urgency=medium"
    echo
    echo "  * Package built from the ipspool source tree ($(git -C "$REPO" describe --always --dirty 2>/dev/null || echo unknown))."
    echo
    echo " -- ipspool maintainers <maintainers@ipspool.invalid>  $(date -R -u -d "@$SOURCE_DATE_EPOCH")"
} | gzip -9n > "$DOC/changelog.Debian.gz"

# Done running the staged interpreter: make its link relative, as policy
# 10.5 asks of links within one top-level directory.
ln -sfn ../../../bin/python3 "$VENV/bin/python3"

# -- control files ----------------------------------------------------------
install -m 755 "$PKG/debian/postinst" "$PKG/debian/prerm" "$PKG/debian/postrm" "$STAGE/DEBIAN/"
install -m 644 "$PKG/debian/conffiles" "$STAGE/DEBIAN/"
libc=$(dpkg-query -W -f='${Version}' libc6 2>/dev/null | cut -d- -f1)
depends="python3 (>= 3.11), python3 (<< 3.12), systemd, init-system-helpers (>= 1.54), libc6 (>= ${libc:-2.36})"
size=$(du -sk --exclude=DEBIAN "$STAGE" | cut -f1)
sed -e "s|@VERSION@|$VERSION|" -e "s|@ARCH@|$ARCH|" -e "s|@INSTALLED_SIZE@|$size|" \
    -e "s|@DEPENDS@|$depends|" -e "s|@MAINTAINER@|ipspool maintainers <maintainers@ipspool.invalid>|" \
    "$PKG/debian/control.in" > "$STAGE/DEBIAN/control"
(cd "$STAGE" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | LC_ALL=C sort -z \
    | xargs -0 md5sum) > "$STAGE/DEBIAN/md5sums"
chmod 644 "$STAGE/DEBIAN/md5sums"

# Reproducible-ish: every file dated from the last commit.
find "$STAGE" -exec touch --no-dereference --date="@$SOURCE_DATE_EPOCH" {} +
dpkg-deb --root-owner-group -Zxz --build "$STAGE" "$DEB" >/dev/null
echo "build-deb: $DEB ($(du -h "$DEB" | cut -f1), $(( $(date +%s) - started ))s)"
