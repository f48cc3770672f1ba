#!/usr/bin/env bash
# Installs what `make chaos` needs beyond the Rust toolchain: schemathesis (PyPI) in its
# own virtualenv, .stack/venv-chaos. Idempotent; the version is pinned so a run is
# reproducible (bump it deliberately).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.stack/venv-chaos"
SCHEMATHESIS_VERSION="4.32.5"

log() { printf '[chaos-tools] %s\n' "$*" >&2; }

if [ -x "$VENV/bin/schemathesis" ] \
    && "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    exit 0
fi
if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    log "python3 venv support is missing; installing python3-venv (Debian)"
    if [ "$(id -u)" -eq 0 ]; then SUDO=(); else SUDO=(sudo); fi
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi
log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
[ -x "$VENV/bin/pip" ] || python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
"$VENV/bin/schemathesis" --version >&2
