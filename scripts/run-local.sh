#!/usr/bin/env bash
# `make run`: the four services and a handful of simulated agents against the local
# stack (scripts/dev-services.sh), each log line prefixed with its service. Ctrl-C
# stops everything this script started.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# shellcheck source=/dev/null
source .stack/env

BIN="${BIN:-target/debug}"
export DB_NAME="${DB_NAME:-opspilot}"
export LOG_FORMAT="${LOG_FORMAT:-pretty}"
export RUST_LOG="${RUST_LOG:-info}"
# Development only: a fixed secret, accepted because OPSPILOT_DEV is set.
export JWT_SECRET="${JWT_SECRET:-opspilot-local-development-secret-0123456789}"
export OPSPILOT_DEV="${OPSPILOT_DEV:-true}"
export HTTP_ADDR="${HTTP_ADDR:-127.0.0.1:8080}"
SIM_AGENTS="${SIM_AGENTS:-5}"
# Every stream's size is reserved on the server's disk when it is created: small
# bounds for a laptop (production defaults total about 8 GiB).
export EVENTS_MAX_BYTES="${EVENTS_MAX_BYTES:-256MiB}" INVENTORY_MAX_BYTES="${INVENTORY_MAX_BYTES:-128MiB}"
export DLQ_MAX_BYTES="${DLQ_MAX_BYTES:-64MiB}" INCIDENTS_MAX_BYTES="${INCIDENTS_MAX_BYTES:-32MiB}"
export AGENTS_BUCKET_MAX_BYTES="${AGENTS_BUCKET_MAX_BYTES:-64MiB}"
# Development only: the first admin, and a bootstrap token the simulated agents enroll with.
export ADMIN_EMAIL="${ADMIN_EMAIL:-admin@opspilot.local}"
export ADMIN_PASSWORD="${ADMIN_PASSWORD:-opspilot-local-admin}"
export BOOTSTRAP_TOKEN="${BOOTSTRAP_TOKEN:-opspilot-local-bootstrap}"
CREDS="$NATS_AUTH/creds"

pids=()
stop() {
    trap - INT TERM EXIT
    echo "[run] stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    echo "[run] stopped"
}
trap stop INT TERM EXIT

# Prefixes every line of a command's output with its name; $! is the command itself.
start() {
    local name="$1"; shift
    "$@" > >(sed -u "s/^/[$name] /") 2>&1 &
    pids+=("$!")
}

wait_http() {
    for _ in $(seq 1 150); do
        if (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    echo "[run] $1 did not come up" >&2
    return 1
}

echo "[run] applying migrations to $DB_NAME"
"$BIN/api-gateway" migrate

# Each service connects with its own NATS identity (bus security is on).
ADMIN_ADDR=127.0.0.1:9090 NATS_AUTH_DIR="$NATS_AUTH" NATS_CREDS="$CREDS/api-gateway.creds" start gateway "$BIN/api-gateway"
ADMIN_ADDR=127.0.0.1:9091 NATS_CREDS="$CREDS/event-ingestor.creds" start ingestor "$BIN/event-ingestor"
ADMIN_ADDR=127.0.0.1:9092 NATS_CREDS="$CREDS/presence-tracker.creds" start presence "$BIN/presence-tracker"
ADMIN_ADDR=127.0.0.1:9093 NATS_CREDS="$CREDS/ai-analyzer.creds" start analyzer "$BIN/ai-analyzer"
wait_http "$HTTP_ADDR"
# The simulated agents enroll through the API and connect with their own credentials.
SIM_API_URL="http://$HTTP_ADDR" SIM_ENROLL_TOKEN="$BOOTSTRAP_TOKEN" \
    start agents "$BIN/agent-sim" --agents "$SIM_AGENTS" --heartbeat-interval 5s --events-per-sec 0.2 \
    --state-dir "$ROOT/.stack/agent-sim"

echo "[run] api on http://$HTTP_ADDR (docs: http://$HTTP_ADDR/api/v1/docs/; admin ports 9091-9093)"
echo "[run] log in as $ADMIN_EMAIL / $ADMIN_PASSWORD; Ctrl-C stops everything"
wait -n "${pids[@]}" || true
echo "[run] a process exited; stopping the rest"
