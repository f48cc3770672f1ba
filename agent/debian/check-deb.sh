# Sourced by deploy/check.sh (`make deploy-check`), which provides ROOT, WORK, log,
# pass, fail and skip: builds the agent's .deb with cargo-deb (installed with
# `cargo install` when missing) and checks what it holds: the hardened unit, the maintainer
# scripts, the conffiles, the polkit rule and a binary that runs; then the unit with
# systemd-analyze (`verify`, and `security` under an exposure ceiling), offline.

# The unit's exposure as `systemd-analyze security` scores it, times ten (its
# --threshold scale): 1.3 with systemd 252. A unit change that loosens the sandbox fails
# the check; lower this when the unit gets tighter.
AGENT_UNIT_MAX_EXPOSURE=13

agent_deb_check() {
    local out="$WORK/agent-deb"
    if ! command -v cargo-deb >/dev/null 2>&1 && ! cargo deb --version >/dev/null 2>&1; then
        log "installing cargo-deb (cargo install)"
        if ! cargo install --locked cargo-deb >"$WORK/cargo-deb-install.log" 2>&1; then
            skip "agent .deb: cargo-deb could not be installed (see $WORK/cargo-deb-install.log)"
            return
        fi
    fi
    rm -rf "$out" && mkdir -p "$out"
    if ! cargo build --release -p opspilot-agent >"$out/build.log" 2>&1; then
        cat "$out/build.log"; fail "agent .deb: release build"; return
    fi
    if ! cargo deb -p opspilot-agent --no-build --strip --output "$out" >"$out/deb.log" 2>&1; then
        cat "$out/deb.log"; fail "agent .deb: cargo deb"; return
    fi
    local deb
    deb="$(ls "$out"/*.deb 2>/dev/null | head -n 1)"
    if [ -z "$deb" ]; then fail "agent .deb: no package written"; return; fi
    dpkg-deb --info "$deb" >"$out/info.txt" 2>&1
    dpkg-deb --contents "$deb" >"$out/contents.txt" 2>&1
    cat "$out/info.txt"
    local missing=()
    for script in postinst prerm postrm conffiles; do
        grep -qw "$script" "$out/info.txt" || missing+=("control: $script")
    done
    for path in ./usr/bin/opspilot-agent ./etc/opspilot-agent/agent.toml ./etc/opspilot-agent/policy.toml \
        ./usr/share/polkit-1/rules.d/50-opspilot-agent.rules; do
        grep -q " $path\$" "$out/contents.txt" || missing+=("file: $path")
    done
    grep -Eq ' \./(usr/)?lib/systemd/system/opspilot-agent\.service$' "$out/contents.txt" || missing+=("file: the systemd unit")
    rm -rf "$out/root" && mkdir -p "$out/root" && dpkg-deb -x "$deb" "$out/root"
    local unit
    unit="$(ls "$out"/root/lib/systemd/system/opspilot-agent.service "$out"/root/usr/lib/systemd/system/opspilot-agent.service 2>/dev/null | head -n 1)"
    for directive in User=opspilot-agent NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes \
        PrivateTmp=yes CapabilityBoundingSet= RestrictAddressFamilies= SystemCallFilter=@system-service; do
        grep -q "^$directive" "${unit:-/dev/null}" || missing+=("unit: $directive")
    done
    dpkg-deb -e "$deb" "$out/control"
    grep -q "adduser --system" "$out/control/postinst" || missing+=("postinst: creates the system user")
    grep -q "systemctl" "$out/control/postinst" || missing+=("postinst: enables the unit")
    if ! "$out/root/usr/bin/opspilot-agent" --version >/dev/null 2>&1; then
        missing+=("the packaged binary does not run")
    fi
    if [ ${#missing[@]} -eq 0 ]; then
        pass "agent .deb: $(basename "$deb") with the hardened unit, maintainer scripts and conffiles"
    else
        printf '  missing: %s\n' "${missing[@]}"
        fail "agent .deb: $(basename "$deb") is incomplete"
    fi
}

# `systemd-analyze verify` and `security --offline=yes` on the packaged unit, without a
# running systemd: both read units under --root, where the package's files are, next to
# a copy of this host's own units (the targets the agent's unit is ordered after).
agent_unit_check() {
    local out="$WORK/agent-deb"
    if ! command -v systemd-analyze >/dev/null 2>&1; then
        skip "agent unit: systemd-analyze is not installed"
        return
    fi
    local host_units
    for host_units in /usr/lib/systemd/system /lib/systemd/system ""; do
        [ -f "$host_units/sysinit.target" ] && break
    done
    if [ -z "$host_units" ]; then
        skip "agent unit: this host has no systemd units to verify against"
        return
    fi
    if [ ! -x "$out/root/usr/bin/opspilot-agent" ]; then
        skip "agent unit: no package was built to check"
        return
    fi
    local root="$out/analyze-root" unit_dir
    rm -rf "$root" && cp -a "$out/root" "$root"
    unit_dir="$(dirname "$(ls "$root"/lib/systemd/system/opspilot-agent.service \
        "$root"/usr/lib/systemd/system/opspilot-agent.service 2>/dev/null | head -n 1)")"
    # --no-clobber: the package's unit, never the host's copy of it.
    cp -an "$host_units/." "$unit_dir/"
    # verify exits 0 on unknown keys and bad values (it only warns): any output fails.
    if ! systemd-analyze verify --root="$root" --man=no opspilot-agent.service >"$out/verify.log" 2>&1 \
        || [ -s "$out/verify.log" ]; then
        cat "$out/verify.log"; fail "agent unit: systemd-analyze verify"
    else
        pass "agent unit: systemd-analyze verify"
    fi
    local exposure
    systemd-analyze security --offline=yes --root="$root" --no-pager opspilot-agent.service \
        >"$out/security.log" 2>&1
    exposure="$(sed -n 's/.*Overall exposure level for opspilot-agent.service: \([0-9.]*\).*/\1/p' "$out/security.log")"
    if [ -z "$exposure" ]; then
        cat "$out/security.log"; fail "agent unit: systemd-analyze security gave no score"
    elif ! systemd-analyze security --offline=yes --root="$root" --threshold="$AGENT_UNIT_MAX_EXPOSURE" \
        opspilot-agent.service >/dev/null 2>&1; then
        grep '✗' "$out/security.log"
        fail "agent unit: exposure $exposure is over $((AGENT_UNIT_MAX_EXPOSURE / 10)).$((AGENT_UNIT_MAX_EXPOSURE % 10))"
    else
        pass "agent unit: exposure $exposure (at most $((AGENT_UNIT_MAX_EXPOSURE / 10)).$((AGENT_UNIT_MAX_EXPOSURE % 10)))"
    fi
}

log "agent .deb"
agent_deb_check
log "agent unit (systemd-analyze)"
agent_unit_check
