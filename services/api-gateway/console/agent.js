// One agent: who it is, its presence over time, its incidents, its inventory and what
// changed in it, and (operators and admins) a command from the allow-list.

import { api, ApiError, can, query } from "./api.js";
import { duration, exactTime, fill, h, notice, pretty, time } from "./dom.js";
import { badge, confirmCommand, errorNotice, field, heading, showReply } from "./pages.js";

const SERVICE = "service";
/** The allow-list, as the gateway enforces it (README, API): what each command takes. */
const COMMANDS = [
  { name: "ping", params: [], hint: "Checks that the agent answers." },
  { name: "service_status", params: [SERVICE], hint: "Reports a service's state; changes nothing." },
  { name: "start_service", params: [SERVICE], hint: "Starts a service." },
  { name: "stop_service", params: [SERVICE], hint: "Stops a service." },
  { name: "restart_service", params: [SERVICE], hint: "Restarts a service." },
  { name: "collect_inventory", params: [], hint: "Asks the agent to report its inventory now." },
  { name: "tail_log", params: ["path", "lines"], hint: "Shows the last lines of a log file under /var/log/." },
];
const SERVICE_PATTERN = "[A-Za-z0-9][A-Za-z0-9_.@:\\-]{0,127}";
const LOG_PATTERN = "/var/log/[A-Za-z0-9_.\\-]+(/[A-Za-z0-9_.\\-]+)*";

export function agentPage(main, { live, id, role }) {
  if (!/^[0-9a-f]{12}$/.test(id)) {
    fill(
      main,
      heading("No such agent"),
      notice("error", `“${id}” is not an agent id.`, "An agent id is 12 lowercase hex characters; pick the agent from the fleet list."),
    );
    return () => {};
  }
  const path = `/api/v1/agents/${encodeURIComponent(id)}`;
  const details = h("div", { id: "agent", "aria-busy": "true" }, "Loading the agent…");
  const presence = h("section", { id: "presence", "aria-labelledby": "presence-title" });
  const incidents = h("section", { id: "agent-incidents", "aria-labelledby": "incidents-title" });
  const inventory = h("section", { id: "inventory", "aria-labelledby": "inventory-title" });
  const command = can(role, "execute") ? h("section", { id: "command", "aria-labelledby": "command-title" }) : null;
  fill(main, h("p", {}, h("a", { href: "#/fleet" }, "← Fleet")), details, command, presence, incidents, inventory);
  let agent = null;

  async function loadAgent() {
    try {
      agent = await api("GET", path);
      details.removeAttribute("aria-busy");
      renderAgent();
      return true;
    } catch (err) {
      details.removeAttribute("aria-busy");
      fill(details, errorNotice(err, `Agent ${id} could not be loaded.`));
      return false;
    }
  }

  function renderAgent() {
    const p = agent.presence || {};
    fill(
      details,
      heading(agent.hostname),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Agent"),
        h("dd", {}, h("code", { id: "agent-id" }, agent.id)),
        h("dt", {}, "Presence"),
        h("dd", { id: "agent-presence" }, badge("presence", p.state || "unknown"), " since ", time(p.since, "unknown")),
        h("dt", {}, "Last heartbeat"),
        h("dd", { id: "agent-heartbeat" }, time(p.last_heartbeat_at)),
        p.threshold_secs != null
          ? [h("dt", {}, "Offline after"), h("dd", {}, `${p.threshold_secs} s without a heartbeat`)]
          : null,
        h("dt", {}, "Enrolled"),
        h("dd", {}, time(agent.enrolled_at, "not through the API")),
        h("dt", {}, "Inventory"),
        h("dd", {}, time(agent.inventory_at, "none yet")),
      ),
    );
  }

  // -- Presence over time ------------------------------------------------------------

  async function loadPresence(before) {
    try {
      const page = await api("GET", `${path}/presence${query({ before, limit: 20 })}`);
      const rows = page.transitions.map((t) =>
        h(
          "tr",
          {},
          h("td", {}, badge("presence", t.state)),
          h("td", {}, time(t.changed_at)),
          h("td", {}, t.until ? time(t.until) : "now"),
          h(
            "td",
            { class: "num" },
            duration((t.until ? new Date(t.until) : new Date()).getTime() - new Date(t.changed_at).getTime()),
          ),
          h("td", {}, t.reason),
        ),
      );
      let tbody = presence.querySelector("tbody");
      if (!before || !tbody) {
        if (!rows.length) {
          fill(
            presence,
            h("h2", { id: "presence-title" }, "Presence over time"),
            notice("empty", "No change of presence recorded yet.", "Changes show here as the agent goes offline and back."),
          );
          return;
        }
        tbody = h("tbody", {});
        fill(
          presence,
          h("h2", { id: "presence-title" }, "Presence over time"),
          h(
            "table",
            { class: "list", id: "timeline" },
            h("caption", { class: "visually-hidden" }, "Changes of presence, newest first"),
            h(
              "thead",
              {},
              h("tr", {}, ["State", "From", "Until", "Lasted", "Why"].map((c) => h("th", { scope: "col", class: c === "Lasted" ? "num" : null }, c))),
            ),
            tbody,
          ),
          h("div", { class: "actions", id: "presence-more" }),
        );
      }
      tbody.append(...rows);
      fill(
        presence.querySelector("#presence-more"),
        page.next_cursor
          ? h("button", { type: "button", onclick: () => loadPresence(page.next_cursor) }, "Earlier changes")
          : null,
      );
    } catch (err) {
      fill(presence, h("h2", { id: "presence-title" }, "Presence over time"), errorNotice(err, "The presence history could not be loaded."));
    }
  }

  // -- Incidents -----------------------------------------------------------------------

  async function loadIncidents(before) {
    const title = h("h2", { id: "incidents-title" }, "Incidents");
    try {
      const page = await api("GET", `${path}/incidents${query({ before, limit: 20 })}`);
      const rows = page.items.map((i) =>
        h(
          "tr",
          { "data-incident-id": i.id },
          h("td", {}, badge("severity", i.severity)),
          h("td", {}, badge("status", i.status)),
          h("td", {}, h("a", { href: `#/incidents/${i.id}` }, i.raw_error || i.type)),
          h("td", {}, i.type),
          h("td", { class: "num" }, i.occurrences),
          h("td", {}, time(i.last_seen_at)),
        ),
      );
      let tbody = incidents.querySelector("tbody");
      if (!before || !tbody) {
        if (!rows.length) {
          fill(incidents, title, notice("empty", "No incidents on this agent.", "Its incidents show here as they are opened."));
          return;
        }
        tbody = h("tbody", {});
        fill(
          incidents,
          title,
          h(
            "table",
            { class: "list" },
            h("caption", { class: "visually-hidden" }, "The agent's incidents, newest first"),
            h(
              "thead",
              {},
              h(
                "tr",
                {},
                ["Severity", "Status", "Error", "Kind", "Occurrences", "Last seen"].map((c) =>
                  h("th", { scope: "col", class: c === "Occurrences" ? "num" : null }, c),
                ),
              ),
            ),
            tbody,
          ),
          h("div", { class: "actions", id: "incidents-more" }),
        );
      }
      tbody.append(...rows);
      fill(
        incidents.querySelector("#incidents-more"),
        page.next_cursor
          ? h("button", { type: "button", onclick: () => loadIncidents(page.next_cursor) }, "Older incidents")
          : null,
      );
    } catch (err) {
      fill(incidents, title, errorNotice(err, "The agent's incidents could not be loaded."));
    }
  }

  // -- Inventory and what changed ------------------------------------------------------

  const snapshots = [];
  const diff = h("div", { id: "diff", "aria-live": "polite" });

  function snapshotLabel(s) {
    return `#${s.id}, collected ${exactTime(s.collected_at)}`;
  }

  async function loadInventory(before) {
    const title = h("h2", { id: "inventory-title" }, "Inventory");
    try {
      const page = await api("GET", `${path}/inventory${query({ before, limit: 50 })}`);
      if (!before) snapshots.length = 0;
      snapshots.push(...page.items);
      if (!snapshots.length) {
        fill(
          inventory,
          title,
          notice(
            "empty",
            "No inventory yet.",
            can(role, "execute")
              ? "Run collect_inventory above to ask the agent for one."
              : "It shows once the agent reports one; an operator can ask for it with collect_inventory.",
          ),
        );
        return;
      }
      renderInventory(title, page.next_cursor);
    } catch (err) {
      fill(inventory, title, errorNotice(err, "The inventory could not be loaded."));
    }
  }

  function renderInventory(title, nextCursor) {
    const latest = snapshots[0];
    const data = latest.data || {};
    const os = data.os || {};
    const facts = h(
      "dl",
      { class: "facts" },
      h("dt", {}, "Latest"),
      h("dd", {}, `#${latest.id}, collected `, time(latest.collected_at)),
      os.name ? [h("dt", {}, "System"), h("dd", {}, `${os.name} ${os.version || ""}`, os.kernel ? `, kernel ${os.kernel}` : "")] : null,
      Array.isArray(data.packages) ? [h("dt", {}, "Packages"), h("dd", {}, data.packages.length)] : null,
      Array.isArray(data.services) ? [h("dt", {}, "Services"), h("dd", {}, data.services.length)] : null,
      h("dt", {}, "Snapshots"),
      h("dd", {}, snapshots.length, nextCursor ? " shown (more are older)" : ""),
    );
    const raw = h("details", {}, h("summary", {}, "The latest snapshot as reported"), h("pre", { id: "inventory-data" }, pretty(data)));
    let compare;
    if (snapshots.length < 2) {
      compare = notice("info", "Only one snapshot so far.", "Changes can be compared once the agent reports a different inventory.");
    } else {
      const choices = (selected) => snapshots.map((s) => h("option", { value: s.id, selected: s.id === selected }, snapshotLabel(s)));
      const from = h("select", { id: "diff-from" }, choices(snapshots[1].id));
      const to = h("select", { id: "diff-to" }, choices(snapshots[0].id));
      const form = h(
        "form",
        { class: "filters", "aria-label": "Compare two snapshots" },
        field("From snapshot", from),
        field("To snapshot", to),
        h("button", { type: "submit", id: "show-diff" }, "Show changes"),
        nextCursor
          ? h("button", { type: "button", id: "older-snapshots", onclick: () => loadInventory(snapshots.at(-1).id) }, "Load older snapshots")
          : null,
      );
      form.addEventListener("submit", (event) => {
        event.preventDefault();
        showDiff(Number(from.value), Number(to.value));
      });
      compare = [h("h3", {}, "What changed between two snapshots"), form, diff];
    }
    fill(inventory, title, facts, raw, compare);
  }

  async function showDiff(from, to) {
    if (from === to) {
      fill(diff, notice("info", "These are the same snapshot.", "Pick two different snapshots to compare."));
      return;
    }
    diff.setAttribute("aria-busy", "true");
    try {
      const out = await api("GET", `${path}/inventory/diff${query({ from, to })}`);
      diff.removeAttribute("aria-busy");
      if (!out.changes.length) {
        fill(diff, notice("empty", `Nothing changed between #${from} and #${to}.`));
        return;
      }
      const value = (v) => (v === undefined || v === null ? h("span", { class: "muted" }, "—") : h("code", {}, pretty(v)));
      fill(
        diff,
        h(
          "table",
          { class: "list" },
          h("caption", {}, `From #${out.from} to #${out.to}: ${out.changes.length} change${out.changes.length === 1 ? "" : "s"}`),
          h("thead", {}, h("tr", {}, ["What", "Change", "Before", "After"].map((c) => h("th", { scope: "col" }, c)))),
          h(
            "tbody",
            {},
            out.changes.map((c) =>
              h("tr", {}, h("td", {}, h("code", {}, c.path)), h("td", {}, badge("op", c.op)), h("td", {}, value(c.from)), h("td", {}, value(c.to))),
            ),
          ),
        ),
      );
    } catch (err) {
      diff.removeAttribute("aria-busy");
      fill(diff, errorNotice(err, "The changes could not be loaded."));
    }
  }

  // -- Run a command (operators and admins) ---------------------------------------------

  function renderCommand() {
    const select = h(
      "select",
      { id: "command-name", "aria-describedby": "command-hint" },
      COMMANDS.map((c) => h("option", { value: c.name }, c.name)),
    );
    const service = h("input", {
      id: "command-service",
      name: "service",
      required: true,
      pattern: SERVICE_PATTERN,
      maxlength: 128,
      autocomplete: "off",
      spellcheck: "false",
      "aria-describedby": "service-hint",
    });
    const logPath = h("input", {
      id: "command-path",
      name: "path",
      required: true,
      value: "/var/log/",
      pattern: LOG_PATTERN,
      maxlength: 256,
      autocomplete: "off",
      spellcheck: "false",
    });
    const lines = h("input", { id: "command-lines", name: "lines", type: "number", min: 1, max: 1000, value: 100, required: true });
    const fields = {
      service: h(
        "div",
        {},
        field("Service", service),
        h("p", { id: "service-hint", class: "hint" }, "A unit name: letters, digits and _ . @ : - (for example nginx)."),
      ),
      path: field("Log file (under /var/log/)", logPath),
      lines: field("Lines (1 to 1000)", lines),
    };
    const inputs = { service, path: logPath, lines };
    const hint = h("p", { id: "command-hint", class: "hint" });
    const submit = h("button", { type: "submit", class: "primary", id: "run-command" }, "Run…");
    const message = h("div", { id: "command-message", "aria-live": "assertive" });
    const reply = h("section", { id: "command-reply", "aria-live": "polite", tabindex: -1 });

    function choose() {
      const spec = COMMANDS.find((c) => c.name === select.value);
      hint.textContent = spec.hint;
      for (const [name, wrap] of Object.entries(fields)) {
        const used = spec.params.includes(name);
        wrap.hidden = !used;
        // A hidden field is left out: not checked, not sent.
        inputs[name].disabled = !used;
      }
    }
    select.addEventListener("change", choose);
    service.addEventListener("input", () => service.setCustomValidity(""));
    logPath.addEventListener("input", () => logPath.setCustomValidity(""));

    const form = h(
      "form",
      { class: "card form", "aria-labelledby": "command-title" },
      field("Command", select),
      hint,
      fields.service,
      fields.path,
      fields.lines,
      h("div", { class: "actions" }, submit),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      fill(message);
      const spec = COMMANDS.find((c) => c.name === select.value);
      const params = {};
      if (spec.params.includes(SERVICE)) {
        if (service.value.includes("..")) {
          service.setCustomValidity("A service name cannot contain '..'.");
          service.reportValidity();
          return;
        }
        params.service = service.value;
      }
      if (spec.params.includes("path")) {
        if (logPath.value.split("/").some((part) => part === "." || part === "..")) {
          logPath.setCustomValidity("The path cannot contain '.' or '..' parts.");
          logPath.reportValidity();
          return;
        }
        params.path = logPath.value;
        params.lines = Number(lines.value);
      }
      // What is shown is what is sent: the same object.
      const shown = { command: spec.name, params };
      const target = agent ? `${agent.hostname} (${id})` : id;
      confirmCommand(target, shown, () => run(shown));
    });

    async function run(shown) {
      submit.disabled = true;
      fill(reply, h("h2", { id: "reply-title" }, "Agent's reply"), h("p", {}, "Waiting for the agent…"));
      try {
        const out = await api("POST", `${path}/execute`, shown);
        showReply(reply, out);
      } catch (err) {
        fill(reply);
        fill(message, commandError(err));
      } finally {
        submit.disabled = false;
      }
    }

    fill(
      command,
      h("h2", { id: "command-title" }, "Run a command"),
      h("p", { class: "hint" }, "Only the allow-listed commands can run. You see exactly what will be sent before it is."),
      form,
      message,
      reply,
    );
    choose();
  }

  let presenceTimer = null;
  let incidentsTimer = null;
  const onMessage = ({ detail: { type, data } }) => {
    if (type === "presence" && data.agent_id === id) {
      if (agent) {
        agent.presence = {
          ...agent.presence,
          state: data.state,
          since: data.changed_at,
          last_heartbeat_at: data.last_seen_at || agent.presence?.last_heartbeat_at,
        };
        renderAgent();
      }
      clearTimeout(presenceTimer);
      presenceTimer = setTimeout(() => loadPresence(), 300);
    } else if (
      (type === "incident.created" && data.agent_id === id) ||
      (type === "incident.updated" && incidents.querySelector(`tr[data-incident-id="${Number(data.incident_id)}"]`))
    ) {
      clearTimeout(incidentsTimer);
      incidentsTimer = setTimeout(() => loadIncidents(), 300);
    }
  };
  const onReload = () => {
    loadAgent();
    loadPresence();
    loadIncidents();
  };

  loadAgent().then((found) => {
    if (!found) return;
    if (command) renderCommand();
    loadPresence();
    loadIncidents();
    loadInventory().then(() => {
      if (snapshots.length >= 2) showDiff(snapshots[1].id, snapshots[0].id);
    });
  });
  live.addEventListener("message", onMessage);
  live.addEventListener("reload", onReload);
  return () => {
    clearTimeout(presenceTimer);
    clearTimeout(incidentsTimer);
    live.removeEventListener("message", onMessage);
    live.removeEventListener("reload", onReload);
  };
}

/** What went wrong with a command, and what to do about it. */
function commandError(err) {
  if (!(err instanceof ApiError)) return errorNotice(err, "The command could not be sent.");
  switch (err.type) {
    case "agent-offline":
      return notice(
        "error",
        "The agent is offline: nothing was sent.",
        err.message,
        ". Wait until its presence shows online, then run the command again.",
      );
    case "timeout":
      return notice(
        "error",
        "The agent did not answer in time.",
        "It may still have run the command: check the audit log, or ask for the state again (service_status).",
      );
    case "invalid-command":
    case "invalid-body":
      return notice("error", "The gateway refused the command: nothing was sent.", err.message, ". Correct it and try again.");
    default:
      break;
  }
  if (err.status === 404) return notice("error", "The agent is unknown or offline: nothing was sent.", err.message);
  if (err.status === 502) return notice("error", "The agent's reply was not valid.", err.message, " Check the agent's version and logs.");
  return errorNotice(err, "The command could not be run.");
}
