// The pages: each renders into <main> and returns a function that stops its live
// updates when the operator leaves it.

import { api, ApiError, can, query, setToken } from "./api.js";
import { fill, h, markShown, notice, pretty, time } from "./dom.js";

const STATUSES = ["new", "analyzed", "acknowledged", "resolved"];
const SEVERITIES = ["info", "warning", "error", "critical"];
export const PAGE = 50;

export function errorNotice(err, what) {
  const detail = err instanceof ApiError ? err.message : String(err);
  let next = "Retry in a moment; if it persists, check the gateway's health (/readyz).";
  if (err instanceof ApiError && err.status === 403) next = "Your role does not allow this; ask an admin.";
  if (err instanceof ApiError && err.status === 404) next = "It may have been removed; go back to the list.";
  if (err instanceof ApiError && err.status === 400) next = "Change the filter and try again.";
  return notice("error", what, detail, " ", next);
}

export function heading(text) {
  return h("h1", { id: "page-title" }, text);
}

export function badge(kind, value) {
  return h("span", { class: `badge ${kind}-${value}` }, value);
}

export function field(label, control) {
  return h("label", { class: "field" }, h("span", {}, label), control);
}

export function options(values, selected, anyLabel) {
  return [
    h("option", { value: "", selected: !selected }, anyLabel),
    ...values.map((v) => h("option", { value: v, selected: v === selected }, v)),
  ];
}

// ---------------------------------------------------------------------------------
// Log in

export function loginPage(main, { onLoggedIn, reason }) {
  const email = h("input", { id: "email", name: "email", type: "email", autocomplete: "username", required: true });
  const password = h("input", {
    id: "password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
    required: true,
  });
  const message = h("div", { id: "login-message" });
  const submit = h("button", { type: "submit", class: "primary", id: "login" }, "Log in");
  const form = h(
    "form",
    { class: "card narrow", "aria-labelledby": "page-title" },
    heading("Log in to OpsPilot"),
    reason ? notice("info", reason) : null,
    field("Email", email),
    field("Password", password),
    message,
    h("div", { class: "actions" }, submit),
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    fill(message);
    try {
      const body = await api("POST", "/api/v1/auth/login", { email: email.value, password: password.value });
      setToken(body.access_token);
      onLoggedIn();
    } catch (err) {
      let what = err.message;
      if (err.status === 401) what = "The email or the password is wrong. Check both and try again.";
      if (err.status === 429) what = "Too many attempts from here. Wait a minute, then try again.";
      fill(message, notice("error", "Not logged in", what));
      password.focus();
    } finally {
      submit.disabled = false;
    }
  });
  fill(main, form);
  email.focus();
  return () => {};
}

// ---------------------------------------------------------------------------------
// Fleet

export function fleetPage(main, { live, params, go }) {
  const filters = { hostname_prefix: params.get("hostname_prefix") || "", status: params.get("status") || "" };
  const after = params.get("after") || "";
  const hostname = h("input", { id: "hostname", type: "search", value: filters.hostname_prefix, maxlength: 255 });
  const status = h("select", { id: "agent-status" }, options(["online", "offline"], filters.status, "any"));
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter agents" },
    field("Hostname starts with", hostname),
    field("Status", status),
    h("button", { type: "submit", id: "apply" }, "Apply"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go("fleet", { hostname_prefix: hostname.value.trim(), status: status.value });
  });
  const body = h("div", { id: "fleet", "aria-live": "polite", "aria-busy": "true" }, "Loading agents…");
  fill(main, heading("Fleet"), form, body);

  const rows = new Map();
  function row(agent) {
    const p = agent.presence || {};
    const tr = h(
      "tr",
      { "data-agent-id": agent.id },
      h("td", {}, h("a", { href: `#/agents/${encodeURIComponent(agent.id)}` }, agent.hostname)),
      h("td", {}, h("code", {}, agent.id)),
      h("td", { class: "status" }, badge("presence", p.state || "unknown")),
      h("td", { class: "heartbeat" }, time(p.last_heartbeat_at)),
      h("td", { class: "since" }, time(p.since, "unknown")),
    );
    rows.set(agent.id, tr);
    return tr;
  }

  const load = () =>
    api("GET", `/api/v1/agents${query({ ...filters, after, limit: PAGE })}`)
    .then((page) => {
      body.removeAttribute("aria-busy");
      rows.clear();
      markShown("fleet");
      if (!page.items.length) {
        const filtered = filters.hostname_prefix || filters.status;
        fill(
          body,
          notice(
            "empty",
            filtered ? "No agent matches these filters." : "No agent is enrolled yet.",
            filtered
              ? "Clear the filters to see the whole fleet."
              : "Enroll a machine with an enrollment token (README, Quick start); it shows here once it sends a heartbeat.",
          ),
        );
        return;
      }
      const table = h(
        "table",
        { class: "list" },
        h("caption", { class: "visually-hidden" }, "Agents"),
        h(
          "thead",
          {},
          h(
            "tr",
            {},
            ["Hostname", "Agent", "Status", "Last heartbeat", "Since"].map((c) => h("th", { scope: "col" }, c)),
          ),
        ),
        h("tbody", {}, page.items.map(row)),
      );
      const paging = h(
        "div",
        { class: "actions" },
        after ? h("a", { href: `#/fleet${query(filters)}`, class: "button" }, "First page") : null,
        page.next_cursor
          ? h("a", { href: `#/fleet${query({ ...filters, after: page.next_cursor })}`, class: "button" }, "Next page")
          : null,
      );
      fill(body, table, paging);
    })
    .catch((err) => {
      body.removeAttribute("aria-busy");
      fill(body, errorNotice(err, "The agents could not be loaded."));
    });

  load();

  const onMessage = ({ detail: { type, data } }) => {
    if (type !== "presence") return;
    const tr = rows.get(data.agent_id);
    if (!tr) return;
    fill(tr.querySelector(".status"), badge("presence", data.state));
    if (data.last_seen_at) fill(tr.querySelector(".heartbeat"), time(data.last_seen_at));
    fill(tr.querySelector(".since"), time(data.changed_at, "unknown"));
  };
  live.addEventListener("message", onMessage);
  live.addEventListener("reload", load);
  return () => {
    live.removeEventListener("message", onMessage);
    live.removeEventListener("reload", load);
  };
}

// ---------------------------------------------------------------------------------
// Incidents across the fleet

export function incidentsPage(main, { live, params, go }) {
  const filters = {
    status: params.get("status") || "",
    severity: params.get("severity") || "",
    q: params.get("q") || "",
  };
  const q = h("input", { id: "q", type: "search", value: filters.q, minlength: 3, maxlength: 200 });
  const status = h("select", { id: "incident-status" }, options(STATUSES, filters.status, "any"));
  const severity = h("select", { id: "incident-severity" }, options(SEVERITIES, filters.severity, "any"));
  const hint = h("p", { id: "q-hint", class: "hint" }, "3 to 200 characters of the source or the error.");
  q.setAttribute("aria-describedby", "q-hint");
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter incidents" },
    field("Search", q),
    field("Status", status),
    field("Severity", severity),
    h("button", { type: "submit", id: "apply" }, "Apply"),
    hint,
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = q.value.trim();
    if (text && text.length < 3) {
      q.setCustomValidity("Type at least 3 characters, or clear the search.");
      q.reportValidity();
      return;
    }
    q.setCustomValidity("");
    go("incidents", { q: text, status: status.value, severity: severity.value });
  });
  q.addEventListener("input", () => q.setCustomValidity(""));

  const summary = h("dl", { id: "summary", class: "summary", "aria-label": "Counts for these filters" });
  const body = h("div", { id: "incidents", "aria-busy": "true" }, "Loading incidents…");
  const tbody = h("tbody", {});
  const more = h("div", { class: "actions" });
  fill(main, heading("Incidents"), form, summary, body);

  const rows = new Map();
  const hostnames = new Map();
  function row(incident) {
    hostnames.set(incident.agent_id, incident.hostname);
    const tr = h(
      "tr",
      { "data-incident-id": incident.id, class: incident.is_critical ? "critical" : "" },
      h("td", {}, badge("severity", incident.severity)),
      h("td", { class: "status" }, badge("status", incident.status)),
      h("td", {}, h("a", { href: `#/incidents/${incident.id}` }, incident.raw_error || incident.type)),
      h("td", {}, incident.type),
      h("td", { class: "host" }, h("a", { href: `#/agents/${encodeURIComponent(incident.agent_id)}` }, incident.hostname || incident.agent_id)),
      h("td", { class: "occurrences num" }, incident.occurrences),
      h("td", { class: "last-seen" }, time(incident.last_seen_at)),
    );
    rows.set(incident.id, tr);
    return tr;
  }
  function matches(incident) {
    if (filters.status && !filters.status.split(",").includes(incident.status)) return false;
    if (filters.severity && !filters.severity.split(",").includes(incident.severity)) return false;
    if (filters.q) {
      const needle = filters.q.toLowerCase();
      if (!`${incident.source}\n${incident.raw_error}`.toLowerCase().includes(needle)) return false;
    }
    return true;
  }
  function table() {
    return h(
      "table",
      { class: "list" },
      h("caption", { class: "visually-hidden" }, "Incidents, newest first"),
      h(
        "thead",
        {},
        h(
          "tr",
          {},
          ["Severity", "Status", "Error", "Kind", "Host", "Occurrences", "Last seen"].map((c) =>
            h("th", { scope: "col", class: c === "Occurrences" ? "num" : null }, c),
          ),
        ),
      ),
      tbody,
    );
  }
  function empty() {
    const filtered = filters.q || filters.status || filters.severity;
    return notice(
      "empty",
      filtered ? "No incident matches these filters." : "No incidents: the fleet is quiet.",
      filtered ? "Widen the search or clear the filters." : "New incidents appear here as they are opened.",
    );
  }

  async function loadSummary() {
    try {
      const s = await api("GET", `/api/v1/incidents/summary${query({ status: filters.status, severity: filters.severity, q: filters.q })}`);
      fill(
        summary,
        ["total", "critical", ...STATUSES].map((k) => h("div", {}, h("dt", {}, k), h("dd", { id: `count-${k}` }, s[k]))),
      );
      markShown("incidents-summary");
    } catch {
      fill(summary);
    }
  }

  async function load(cursor) {
    try {
      const page = await api("GET", `/api/v1/incidents${query({ ...filters, cursor, limit: PAGE })}`);
      body.removeAttribute("aria-busy");
      if (!cursor) markShown("incidents");
      if (!cursor) {
        tbody.replaceChildren();
        rows.clear();
      }
      for (const incident of page.items) if (!rows.has(incident.id)) tbody.append(row(incident));
      if (!rows.size) fill(body, empty());
      else if (!cursor) fill(body, table(), more);
      fill(
        more,
        page.next_cursor
          ? h("button", { type: "button", id: "older", onclick: () => load(page.next_cursor) }, "Older incidents")
          : null,
      );
    } catch (err) {
      body.removeAttribute("aria-busy");
      fill(body, errorNotice(err, "The incidents could not be loaded."));
    }
  }

  async function arrived(id) {
    let incident;
    try {
      incident = await api("GET", `/api/v1/incidents/${id}`);
    } catch {
      return;
    }
    if (rows.has(incident.id) || !matches(incident)) return;
    let host = hostnames.get(incident.agent_id);
    if (!host) {
      try {
        host = (await api("GET", `/api/v1/agents/${encodeURIComponent(incident.agent_id)}`)).agent.hostname;
      } catch {
        host = incident.agent_id;
      }
    }
    if (rows.has(incident.id)) return;
    const tr = row({ ...incident, hostname: host });
    tr.classList.add("arrived");
    if (!tbody.isConnected) fill(body, table(), more);
    tbody.prepend(tr);
  }

  let summaryTimer = null;
  const onMessage = ({ detail: { type, data } }) => {
    if (type === "incident.created") {
      arrived(data.incident_id);
    } else if (type === "incident.updated") {
      const tr = rows.get(data.incident_id);
      if (tr && data.status) fill(tr.querySelector(".status"), badge("status", data.status));
      if (tr && data.occurrences != null) fill(tr.querySelector(".occurrences"), data.occurrences);
      if (tr && data.last_seen_at) fill(tr.querySelector(".last-seen"), time(data.last_seen_at));
    } else {
      return;
    }
    // Counts are served through the API's page cache (about 2 s): ask soon, then again.
    clearTimeout(summaryTimer);
    summaryTimer = setTimeout(() => {
      loadSummary();
      summaryTimer = setTimeout(loadSummary, 2500);
    }, 500);
  };
  const onReload = () => {
    load();
    loadSummary();
  };
  live.addEventListener("message", onMessage);
  live.addEventListener("reload", onReload);
  load();
  loadSummary();
  return () => {
    clearTimeout(summaryTimer);
    live.removeEventListener("message", onMessage);
    live.removeEventListener("reload", onReload);
  };
}

// ---------------------------------------------------------------------------------
// One incident

export function incidentPage(main, { live, id, role }) {
  const details = h("div", { id: "incident", "aria-busy": "true" }, "Loading the incident…");
  const reply = h("section", { id: "action-reply", "aria-live": "polite", "aria-labelledby": "reply-title" });
  const message = h("div", { id: "incident-message", "aria-live": "assertive" });
  fill(main, h("p", {}, h("a", { href: "#/incidents" }, "← All incidents")), details, message, reply);
  let current = null;
  let busy = false;

  async function load() {
    try {
      current = await api("GET", `/api/v1/incidents/${id}`);
      details.removeAttribute("aria-busy");
      render();
      markShown("incident");
    } catch (err) {
      details.removeAttribute("aria-busy");
      fill(details, errorNotice(err, `Incident ${id} could not be loaded.`));
    }
  }

  function button(label, idAttr, onclick, primary = false) {
    return h("button", { type: "button", id: idAttr, class: primary ? "primary" : "", disabled: busy, onclick }, label);
  }

  async function act(what, run) {
    busy = true;
    render();
    fill(message);
    try {
      await run();
    } catch (err) {
      let next = err.message;
      if (err.type === "suggestion-changed") next = `${err.message} The incident was reloaded: review the new suggestion.`;
      fill(message, notice("error", `Could not ${what}.`, next));
      await load();
    } finally {
      busy = false;
      render();
    }
  }

  function render() {
    const i = current;
    if (!i) return;
    const a = i.analysis || {};
    const operations = [];
    if (can(role, "analyze")) {
      operations.push(
        button("Analyze again", "analyze", () =>
          act("analyze the incident", async () => {
            current = await api("POST", `/api/v1/incidents/${i.id}/analyze`);
          }),
        ),
      );
    }
    if (can(role, "acknowledge") && (i.status === "new" || i.status === "analyzed")) {
      operations.push(
        button("Acknowledge", "acknowledge", () =>
          act("acknowledge the incident", async () => {
            current = await api("PATCH", `/api/v1/incidents/${i.id}`, { status: "acknowledged" });
          }),
        ),
      );
    }
    if (can(role, "resolve") && i.status !== "resolved") {
      operations.push(
        button("Resolve", "resolve", () =>
          act("resolve the incident", async () => {
            current = await api("PATCH", `/api/v1/incidents/${i.id}`, { status: "resolved" });
          }),
        ),
      );
    }

    const action = i.suggested_action;
    let suggestion;
    if (action && typeof action.command === "string") {
      suggestion = h(
        "div",
        { id: "suggestion" },
        h("dl", { class: "facts" }, h("dt", {}, "Command"), h("dd", {}, h("code", { id: "suggested-command" }, action.command)), h("dt", {}, "Parameters"), h("dd", {}, h("pre", { id: "suggested-params" }, pretty(action.params ?? {})))),
        can(role, "execute")
          ? h("div", { class: "actions" }, button("Run suggested action…", "run-action", () => confirmAndRun(i, action), true))
          : null,
      );
    } else {
      suggestion = notice(
        "empty",
        "No suggested action.",
        can(role, "analyze") ? "Analyze the incident to get one." : "An operator can analyze the incident to get one.",
      );
    }

    fill(
      details,
      h(
        "header",
        { class: "incident-head" },
        h("h1", { id: "page-title" }, `Incident ${i.id}: ${i.type}`),
        h("p", {}, badge("severity", i.severity), " ", h("span", { id: "incident-status" }, badge("status", i.status)), i.is_critical ? [" ", h("span", { class: "badge flag-critical" }, "critical incident")] : ""),
      ),
      h("div", { class: "actions", role: "group", "aria-label": "Incident actions" }, operations),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Agent"),
        h("dd", {}, h("a", { id: "incident-agent", href: `#/agents/${encodeURIComponent(i.agent_id)}` }, h("code", {}, i.agent_id))),
        h("dt", {}, "Source"),
        h("dd", {}, i.source),
        h("dt", {}, "Occurrences"),
        h("dd", { id: "occurrences" }, i.occurrences),
        h("dt", {}, "First seen"),
        h("dd", {}, time(i.first_seen_at)),
        h("dt", {}, "Last seen"),
        h("dd", {}, time(i.last_seen_at)),
        i.acknowledged_at ? [h("dt", {}, "Acknowledged"), h("dd", {}, time(i.acknowledged_at), " by ", i.acknowledged_by || "?")] : null,
        i.resolved_at ? [h("dt", {}, "Resolved"), h("dd", {}, time(i.resolved_at), " by ", i.resolved_by || "?")] : null,
      ),
      h("h2", {}, "Raw error"),
      h("pre", { id: "raw-error" }, i.raw_error),
      h("h2", {}, "Context"),
      h("pre", { id: "context" }, pretty(i.context) || "(none)"),
      h("h2", {}, "Analysis"),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Status"),
        h("dd", { id: "analysis-status" }, a.status || "none"),
        a.analyzer ? [h("dt", {}, "By"), h("dd", {}, a.analyzer, a.model ? ` (${a.model})` : "")] : null,
        a.analyzed_at ? [h("dt", {}, "When"), h("dd", {}, time(a.analyzed_at))] : null,
        a.error ? [h("dt", {}, "Error"), h("dd", {}, a.error)] : null,
      ),
      i.ai_analysis ? h("p", { id: "analysis", class: "analysis" }, i.ai_analysis) : notice("empty", "Not analyzed yet."),
      a.dropped_action
        ? notice("info", "The analyzer suggested a command the allow-list refuses; it was dropped.", pretty(a.dropped_action))
        : null,
      h("h2", {}, "Suggested action"),
      suggestion,
      i.action_result
        ? [h("h2", {}, "Last action"), i.action_executed_at ? h("p", {}, "Ran ", time(i.action_executed_at)) : null, h("pre", { id: "last-action" }, pretty(i.action_result))]
        : null,
    );
  }

  function confirmAndRun(incident, action) {
    // What is shown is what is sent: the same object, frozen at this moment.
    const shown = { command: action.command, params: action.params ?? {} };
    confirmCommand(incident.agent_id, shown, () =>
      act("run the suggested action", async () => {
        fill(reply, h("h2", { id: "reply-title" }, "Agent's reply"), h("p", {}, "Waiting for the agent…"));
        try {
          const out = await api("POST", `/api/v1/incidents/${incident.id}/execute`, shown);
          current = out.incident;
          showReply(reply, out.result);
        } catch (err) {
          fill(reply);
          throw err;
        }
      }),
    );
  }

  let reloadTimer = null;
  const onMessage = ({ detail: { type, data } }) => {
    if (type !== "incident.updated" || String(data.incident_id) !== String(id) || busy) return;
    clearTimeout(reloadTimer);
    reloadTimer = setTimeout(load, 300);
  };
  const onReload = () => {
    if (!busy) load();
  };
  reply.tabIndex = -1;
  live.addEventListener("message", onMessage);
  live.addEventListener("reload", onReload);
  load();
  return () => {
    clearTimeout(reloadTimer);
    live.removeEventListener("message", onMessage);
    live.removeEventListener("reload", onReload);
  };
}

// ---------------------------------------------------------------------------------
// Shared by the pages that run commands

/**
 * Shows exactly what will run (the agent, the command, its parameters) in the
 * confirmation dialog; calls `onRun` only when the operator chooses "Run it".
 */
export function confirmCommand(agentId, shown, onRun) {
  const dialog = document.getElementById("confirm");
  document.getElementById("confirm-agent").textContent = agentId;
  document.getElementById("confirm-command").textContent = shown.command;
  document.getElementById("confirm-params").textContent = pretty(shown.params);
  dialog.returnValue = "";
  dialog.addEventListener(
    "close",
    () => {
      if (dialog.returnValue === "run") onRun();
    },
    { once: true },
  );
  dialog.showModal();
  document.getElementById("confirm-cancel").focus();
}

/** The agent's reply to a command, into `reply` (a focusable section). */
export function showReply(reply, result) {
  fill(
    reply,
    h("h2", { id: "reply-title" }, "Agent's reply"),
    h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Command"),
      h("dd", {}, h("code", {}, result.command)),
      h("dt", {}, "Outcome"),
      h("dd", { id: "reply-status" }, result.status),
      result.exit_code != null ? [h("dt", {}, "Exit code"), h("dd", {}, result.exit_code)] : null,
      h("dt", {}, "Took"),
      h("dd", {}, `${result.duration_ms} ms on the agent, ${result.round_trip_ms} ms in all`),
    ),
    result.output != null ? h("pre", { id: "reply-output" }, result.output) : null,
    result.error ? notice("error", `The agent refused: ${result.error.code}`, result.error.message) : null,
  );
  reply.focus();
}
