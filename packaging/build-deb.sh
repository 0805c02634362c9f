#!/usr/bin/env bash
# Build the Debian package with dpkg-buildpackage, inside a clean root of each
# target release (debootstrap, cached for the day: tests/support/debroot.py),
# so the package is built on, linked against and depends on that release's
# own python3 and libraries, never the build host's. docs/packaging.md.
#
#   packaging/build-deb.sh                    Debian 12 and Debian 13
#   packaging/build-deb.sh trixie             Debian 13 only
#   IPSPOOL_DEB_REVISIONS="1 2" ...           also revision 2 (the upgrade test)
#   IPSPOOL_DEB_OUT=/tmp/debs ...             somewhere else than packaging/out
#
# Writes OUT/RELEASE/ipspool_VERSION_ARCH.deb for each revision, and
# OUT/RELEASE/lintian.txt: that release's lintian on the first revision.
# Needs root, debootstrap and systemd-nspawn; pip inside the root fetches the
# dependencies from the package index (its cache is kept per release).
set -euo pipefail
umask 022

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${IPSPOOL_DEB_OUT:-$REPO/packaging/out}
CACHE=${IPSPOOL_TEST_CACHE:-/var/cache/ipspool-test}
REVISIONS=${IPSPOOL_DEB_REVISIONS:-1}
# Seconds one dpkg-buildpackage (or lintian) may take in the root.
LIMIT=${IPSPOOL_DEB_TIMEOUT:-1200}

die() { echo "build-deb: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "needs root (debootstrap and systemd-nspawn make and enter the build root)"
for tool in debootstrap:debootstrap systemd-nspawn:systemd-container git:git; do
    command -v "${tool%%:*}" >/dev/null || die "${tool%%:*} not found (apt-get install ${tool##*:})"
done
if [ $# -eq 0 ]; then set -- bookworm trixie; fi

upstream=$(sed -n '1s/^ipspool (\([^-]*\)-[^)]*).*/\1/p' "$REPO/debian/changelog")
[ -n "$upstream" ] || die "debian/changelog does not start with an ipspool (UPSTREAM-REVISION) entry"

# systemd-nspawn wants this mounted ("Attempted to remove disk file system
# under /run/systemd/nspawn/propagate"); another user may have mounted it.
if ! awk '$5 == "/run/systemd/nspawn" {found=1} END {exit !found}' /proc/self/mountinfo; then
    mkdir -p /run/systemd/nspawn && mount -t tmpfs tmpfs /run/systemd/nspawn
fi

WORK=""
trap 'rm -rf "$WORK"' EXIT

# pip in the root trusts what this machine trusts (a site's own CA, say):
# the host's bundle is bound read-only into the root for the build.
HOST_CA=/etc/ssl/certs/ca-certificates.crt
ca_args=()
if [ -r "$HOST_CA" ]; then
    ca_args=(--bind-ro="$HOST_CA:/etc/ssl/host-ca-certificates.crt" --setenv=PIP_CERT=/etc/ssl/host-ca-certificates.crt)
fi

in_root() {  # in_root RELEASE COMMAND...: run in the build root (not booted), with the host's network
    local release=$1; shift
    timeout "$LIMIT" systemd-nspawn --quiet --register=no --keep-unit --pipe -D "$WORK" "${ca_args[@]}" \
        --bind="$CACHE/pip-$release:/root/.cache/pip" --chdir=/build/ipspool \
        --setenv=DEB_BUILD_OPTIONS=nocheck --setenv=LC_ALL=C.UTF-8 -- "$@"
}

add_revision() {  # add_revision CHANGELOG N: a new top entry UPSTREAM-N
    local changelog=$1 n=$2 old
    old=$(cat "$changelog")
    {
        echo "ipspool ($upstream-$n) unstable; urgency=medium"
        echo
        echo "  * Rebuild as revision $n."
        echo
        echo " -- ipspool maintainers <maintainers@ipspool.invalid>  $(date -R -u)"
        echo
        echo "$old"
    } > "$changelog"
}

build_release() {
    local release=$1 started tarball src n first=1
    started=$(date +%s)
    tarball=$(cd "$REPO" && python3 -m tests.support.debroot "$release" build)
    mkdir -p "$OUT/$release" "$CACHE/pip-$release"
    WORK=$(mktemp -d "$OUT/.root-$release-XXXXXX")
    tar -C "$WORK" --numeric-owner -xpf "$tarball"
    src=$WORK/build/ipspool
    mkdir -p "$src"
    # The checkout's files as they are now (committed or not), nothing ignored.
    git -C "$REPO" ls-files -z -co --exclude-standard \
        | tar -C "$REPO" --null --ignore-failed-read -T - -cf - | tar -C "$src" -xf -
    for n in $REVISIONS; do
        [ "$n" = 1 ] || add_revision "$src/debian/changelog" "$n"
        echo "build-deb: $release, ipspool $upstream-$n"
        in_root "$release" dpkg-buildpackage -b -us -uc >"$OUT/$release/build-$n.log" 2>&1 \
            || { tail -40 "$OUT/$release/build-$n.log" >&2; die "dpkg-buildpackage failed ($release, revision $n)"; }
        if [ "$first" = 1 ]; then
            first=0
            in_root "$release" sh -c 'lintian --tag-display-limit 0 ../ipspool_*.deb; echo "lintian exit: $?"' \
                >"$OUT/$release/lintian.txt" 2>&1 || true
        fi
        mv "$WORK"/build/ipspool_"$upstream-$n"_*.deb "$OUT/$release/"
        rm -f "$WORK"/build/ipspool_*.buildinfo "$WORK"/build/ipspool_*.changes
    done
    rm -rf "$WORK"
    echo "build-deb: $release done in $(( $(date +%s) - started ))s: $(ls "$OUT/$release"/*.deb | tr '\n' ' ')"
}

for release in "$@"; do
    build_release "$release"
done
