#!/usr/bin/env bash
# `make bench`: release builds, the local stack, then every benchmark scenario.
# Arguments pass through to opspilot-bench (e.g. --only ingest --events 500000).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

scripts/dev-services.sh --test
# The read scenario drives the API with wrk.
if ! command -v wrk >/dev/null 2>&1; then
    echo "[bench] installing wrk (Debian package)"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    # A fresh machine may have no package lists yet.
    $SUDO apt-get install -y -qq wrk >/dev/null 2>&1 \
        || { $SUDO apt-get update -qq >/dev/null && $SUDO apt-get install -y -qq wrk >/dev/null; }
fi
cargo build --release -q -p opspilot-bench -p api-gateway -p event-ingestor -p presence-tracker -p ai-analyzer -p agent-sim -p opspilot-agent
# shellcheck source=/dev/null
source .stack/env
exec target/release/opspilot-bench "$@"
