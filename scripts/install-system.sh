#!/usr/bin/env bash
# Install the system parts androcond's test bed needs on a fresh Debian 12 machine (run as root).
# Idempotent: a second run only checks. See docs/testbed.md for why each part is here.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

# CRIU 4.2.1 or later: 4.1.1 cannot dump any INET socket on Linux >= 6.16 (criu#2705). Debian has it in sid.
CRIU_SUITE=${ANDROCOND_CRIU_SUITE:-sid}
CRIU_ROOT=${ANDROCOND_CRIU_ROOT:-/opt/androcond/criu-$CRIU_SUITE}
CRIU_MIN=4.2.1
MIRROR=${ANDROCOND_DEBIAN_MIRROR:-http://deb.debian.org/debian}

log() { printf '[install-system] %s\n' "$*" >&2; }

if [ "$(id -u)" != 0 ]; then
    log "must run as root"; exit 2
fi

# adb/adbd 34 live in bookworm-backports; Debian 12's own adb has no adbd.
backports=/etc/apt/sources.list.d/androcond-backports.sources
if [ ! -e "$backports" ]; then
    cat >"$backports" <<SRC
Types: deb
URIs: $MIRROR
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    apt_updated=0
fi

# The packages: one list (scripts/system-packages.txt), each with the suite it comes from.
here=$(cd "$(dirname "$0")" && pwd)
declare -A by_suite=()
missing=()
while read -r package suite _; do
    case "$package" in ''|'#'*) continue ;; esac
    by_suite[$suite]+=" $package"
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed' || missing+=("$package")
done <"$here/system-packages.txt"
if [ "${#missing[@]}" -gt 0 ] || [ "${apt_updated:-1}" = 0 ]; then
    log "installing: ${missing[*]:-none}"
    apt-get update -q
    for suite in "${!by_suite[@]}"; do
        target=()  # the machine's own release needs no -t (its -updates and -security stay preferred)
        [ "$suite" = bookworm ] || target=(-t "$suite")
        # shellcheck disable=SC2086  # one word per package
        apt-get install -y -q --no-install-recommends "${target[@]}" ${by_suite[$suite]}
    done
fi
bash "$here/check-system.sh"

# Debian 12's criu (3.17) fails `criu check` on current kernels, and trixie's 4.1.1 fails on sockets; CRIU
# 4.2.1 from sid works. It needs a newer libc than bookworm's, so it lives in its own root and runs through that
# root's loader. Debian 12's criu package stays installed for `crit`, our independent decoding oracle in tests.
if [ ! -x "$CRIU_ROOT/usr/sbin/criu" ]; then
    log "bootstrapping CRIU ($CRIU_SUITE) into $CRIU_ROOT"
    rm -rf "$CRIU_ROOT.partial"
    mkdir -p "$(dirname "$CRIU_ROOT")"
    debootstrap --variant=minbase --include=criu "$CRIU_SUITE" "$CRIU_ROOT.partial" "$MIRROR" >/dev/null
    mv "$CRIU_ROOT.partial" "$CRIU_ROOT"
fi
cat >/usr/local/sbin/criu <<WRAP
#!/bin/sh
# CRIU 4 from its own trixie root (installed by androcond's scripts/install-system.sh).
exec $CRIU_ROOT/lib64/ld-linux-x86-64.so.2 --library-path $CRIU_ROOT/usr/lib/x86_64-linux-gnu:$CRIU_ROOT/lib/x86_64-linux-gnu $CRIU_ROOT/usr/sbin/criu "\$@"
WRAP
chmod 755 /usr/local/sbin/criu
criu_version=$(/usr/local/sbin/criu --version | sed -n 's/^Version: //p')
if [ "$(printf '%s\n%s\n' "$CRIU_MIN" "$criu_version" | sort -V | head -1)" != "$CRIU_MIN" ]; then
    log "CRIU $criu_version in $CRIU_ROOT is older than $CRIU_MIN (sockets cannot be dumped on this kernel)"
    exit 1
fi
log "CRIU $criu_version"

# runc hands CRIU this file on every checkpoint and restore: established TCP connections are closed rather
# than refused (a restored container has another address; clients reconnect). Ours only if it is absent.
if [ ! -e /etc/criu/runc.conf ]; then
    mkdir -p /etc/criu
    printf '# written by androcond (scripts/install-system.sh)\ntcp-close\n' >/etc/criu/runc.conf
fi

# The engine's checkpoint API is experimental in Docker 20.10.
mkdir -p /etc/docker
if [ ! -e /etc/docker/daemon.json ]; then
    printf '{"experimental": true}\n' >/etc/docker/daemon.json
fi
log "done"
