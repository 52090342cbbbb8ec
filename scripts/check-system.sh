#!/usr/bin/env bash
# Verify that every system package in scripts/system-packages.txt is present, by the command or file it
# provides. Names each missing one and its package; exits 1 if any is missing. Does not need root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
list=${1:-$here/system-packages.txt}
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

missing=0
while read -r package suite provides _; do
    case "$package" in ''|'#'*) continue ;; esac
    if [[ "$provides" == /* ]]; then
        [ -e "$provides" ] && continue
    else
        command -v "$provides" >/dev/null 2>&1 && continue
    fi
    printf '[check-system] missing %s: install the package %s (%s)\n' "$provides" "$package" "$suite" >&2
    missing=$((missing + 1))
done <"$list"
if [ "$missing" -gt 0 ]; then
    printf '[check-system] %d missing: run scripts/install-system.sh as root\n' "$missing" >&2
    exit 1
fi
printf '[check-system] all %d packages present\n' "$(grep -cvE '^\s*(#|$)' "$list")" >&2
