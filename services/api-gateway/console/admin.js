// The admins' pages: the audit log, users, enrollment tokens. The navigation offers
// them to admins only; the API refuses everyone else anyway (403).

import { api, query } from "./api.js";
import { ask, fill, h, notice, time } from "./dom.js";
import { badge, errorNotice, field, heading, options, PAGE } from "./pages.js";

const ROLES = ["viewer", "operator", "admin"];

export function adminDenied(main) {
  fill(main, heading("Admins only"), notice("error", "Your role cannot see this page.", "Log in as an admin, or ask one."));
  return () => {};
}

/** A change that failed: the API's reason and what to do. */
function failed(what, err) {
  let next = "Check the values and try again.";
  if (err.status === 409) next = "It conflicts with what is already there; change it and try again.";
  if (err.status === 403) next = "Only admins can do this.";
  if (err.status === 0 || err.status >= 500) next = "Retry in a moment; if it persists, check the gateway's health (/readyz).";
  return notice("error", `Could not ${what}.`, err.message, " ", next);
}

// ---------------------------------------------------------------------------------
// The audit log

export function auditPage(main, { params, go }) {
  const agentId = params.get("agent_id") || "";
  const before = params.get("before") || "";
  const agent = h("input", {
    id: "audit-agent",
    type: "search",
    value: agentId,
    pattern: "[0-9a-f]{12}",
    maxlength: 12,
    spellcheck: "false",
    "aria-describedby": "audit-agent-hint",
  });
  const form = h(
    "form",
    { class: "filters", role: "search", "aria-label": "Filter the audit log" },
    field("Agent id", agent),
    h("button", { type: "submit", id: "apply" }, "Apply"),
    h("p", { id: "audit-agent-hint", class: "hint" }, "12 lowercase hex characters; empty for every entry."),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    go("audit", { agent_id: agent.value.trim() });
  });
  const body = h("div", { id: "audit", "aria-busy": "true" }, "Loading the audit log…");
  fill(main, heading("Audit log"), form, body);

  api("GET", `/api/v1/audit${query({ agent_id: agentId, before, limit: PAGE })}`)
    .then((page) => {
      body.removeAttribute("aria-busy");
      if (!page.items.length) {
        fill(
          body,
          agentId || before
            ? notice("empty", "No entry here.", "Check the agent id, or clear the filter to see every entry.")
            : notice("empty", "The audit log is empty.", "Actions, enrollments and administrative changes are recorded here as they happen."),
        );
        return;
      }
      const rows = page.items.map((e) =>
        h(
          "tr",
          { "data-audit-id": e.id },
          h("td", {}, time(e.started_at)),
          h("td", {}, e.actor),
          h("td", { class: "action" }, e.action),
          h(
            "td",
            {},
            e.agent_id ? h("a", { href: `#/agents/${encodeURIComponent(e.agent_id)}` }, h("code", {}, e.agent_id)) : null,
            e.agent_id && e.incident_id ? " " : null,
            e.incident_id ? h("a", { href: `#/incidents/${e.incident_id}` }, `incident ${e.incident_id}`) : null,
          ),
          h(
            "td",
            {},
            e.command ? h("code", {}, e.command) : null,
            e.command && e.params ? " " : null,
            e.params ? h("code", { class: "params" }, JSON.stringify(e.params)) : null,
          ),
          h("td", {}, badge("outcome", e.outcome)),
          h("td", { class: "num" }, e.duration_ms != null ? `${e.duration_ms} ms` : ""),
        ),
      );
      fill(
        body,
        h(
          "table",
          { class: "list" },
          h("caption", { class: "visually-hidden" }, "Audit log, newest first"),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["When", "By", "Action", "On", "Command or details", "Outcome", "Took"].map((c) =>
                h("th", { scope: "col", class: c === "Took" ? "num" : null }, c),
              ),
            ),
          ),
          h("tbody", {}, rows),
        ),
        h(
          "div",
          { class: "actions" },
          before ? h("a", { href: `#/audit${query({ agent_id: agentId })}`, class: "button" }, "Newest entries") : null,
          page.next_cursor
            ? h("a", { href: `#/audit${query({ agent_id: agentId, before: page.next_cursor })}`, class: "button", id: "older" }, "Older entries")
            : null,
        ),
      );
    })
    .catch((err) => {
      body.removeAttribute("aria-busy");
      fill(body, errorNotice(err, "The audit log could not be loaded."));
    });
  return () => {};
}

// ---------------------------------------------------------------------------------
// Users

export function usersPage(main, { email: me }) {
  const email = h("input", { id: "new-email", type: "email", required: true, maxlength: 254, autocomplete: "off" });
  const password = h("input", {
    id: "new-password",
    type: "password",
    required: true,
    minlength: 12,
    autocomplete: "new-password",
    "aria-describedby": "new-password-hint",
  });
  const role = h("select", { id: "new-role" }, ROLES.map((r) => h("option", { value: r }, r)));
  const submit = h("button", { type: "submit", class: "primary", id: "create-user" }, "Create user");
  const message = h("div", { id: "users-message", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "card form", "aria-labelledby": "new-user-title" },
    h("h2", { id: "new-user-title" }, "New user"),
    field("Email", email),
    field("Password", password),
    h("p", { id: "new-password-hint", class: "hint" }, "At least 12 characters. Give it to the user through a safe channel."),
    field("Role", role),
    h("div", { class: "actions" }, submit),
  );
  const body = h("div", { id: "users", "aria-busy": "true" }, "Loading users…");
  fill(main, heading("Users"), form, message, h("h2", {}, "Every user"), body);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    fill(message);
    try {
      const user = await api("POST", "/api/v1/users", { email: email.value.trim(), password: password.value, role: role.value });
      fill(message, notice("info", `Created ${user.email} (${user.role}).`, "They can log in now."));
      form.reset();
      await load();
    } catch (err) {
      fill(message, failed("create the user", err));
    } finally {
      submit.disabled = false;
    }
  });

  /** PATCHes a user; `verb` says what was tried ("disable x"), `done` what happened. */
  async function change(user, body, verb, done) {
    fill(message);
    try {
      await api("PATCH", `/api/v1/users/${encodeURIComponent(user.id)}`, body);
      fill(message, notice("info", `${done}.`));
      await load();
    } catch (err) {
      fill(message, failed(verb, err));
    }
  }

  function row(user) {
    const self = user.email === me;
    let controls;
    if (self) {
      controls = h("span", { class: "muted" }, "you (an admin cannot demote or disable themselves)");
    } else {
      const newRole = h("select", { "aria-label": `New role of ${user.email}` }, options(ROLES, user.role, "role…").slice(1));
      controls = h(
        "div",
        { class: "actions" },
        newRole,
        h(
          "button",
          {
            type: "button",
            "aria-label": `Change the role of ${user.email}`,
            onclick: async () => {
              if (newRole.value === user.role) return;
              if (await ask(`Make ${user.email} ${newRole.value}?`, "Their sessions end at once; they log in again with the new role.", "Change role")) {
                await change(user, { role: newRole.value }, `change the role of ${user.email}`, `${user.email} is now ${newRole.value}`);
              }
            },
          },
          "Change role",
        ),
        h(
          "button",
          {
            type: "button",
            class: "toggle",
            "aria-label": `${user.disabled ? "Enable" : "Disable"} ${user.email}`,
            onclick: async () => {
              const disable = !user.disabled;
              const yes = disable
                ? await ask(`Disable ${user.email}?`, "They can no longer log in, and their sessions end at once.", "Disable")
                : await ask(`Enable ${user.email}?`, "They can log in again with their password.", "Enable");
              if (yes) {
                await change(
                  user,
                  { disabled: disable },
                  `${disable ? "disable" : "enable"} ${user.email}`,
                  `${user.email} is ${disable ? "disabled" : "enabled"}`,
                );
              }
            },
          },
          user.disabled ? "Enable" : "Disable",
        ),
      );
    }
    return h(
      "tr",
      { "data-user": user.email },
      h("td", {}, user.email),
      h("td", { class: "role" }, user.role),
      h("td", { class: "state" }, badge("state", user.disabled ? "disabled" : "active")),
      h("td", {}, time(user.created_at)),
      h("td", {}, time(user.last_login_at)),
      h("td", {}, controls),
    );
  }

  async function load() {
    try {
      const users = await api("GET", "/api/v1/users");
      body.removeAttribute("aria-busy");
      fill(
        body,
        h(
          "table",
          { class: "list" },
          h("caption", { class: "visually-hidden" }, "Users"),
          h(
            "thead",
            {},
            h("tr", {}, ["Email", "Role", "State", "Created", "Last login", "Change"].map((c) => h("th", { scope: "col" }, c))),
          ),
          h("tbody", {}, users.map(row)),
        ),
      );
    } catch (err) {
      body.removeAttribute("aria-busy");
      fill(body, errorNotice(err, "The users could not be loaded."));
    }
  }
  load();
  return () => {};
}

// ---------------------------------------------------------------------------------
// Enrollment tokens

const LIFETIMES = [
  ["1 hour", 3600],
  ["1 day", 86400],
  ["7 days", 7 * 86400],
  ["30 days", 30 * 86400],
  ["90 days", 90 * 86400],
];

export function tokensPage(main) {
  const name = h("input", { id: "token-name", required: true, maxlength: 128, autocomplete: "off" });
  const lifetime = h(
    "select",
    { id: "token-lifetime" },
    LIFETIMES.map(([label, secs]) => h("option", { value: secs, selected: secs === 86400 }, label)),
  );
  const maxUses = h("input", {
    id: "token-max-uses",
    type: "number",
    min: 1,
    max: 1000000,
    "aria-describedby": "token-max-uses-hint",
  });
  const submit = h("button", { type: "submit", class: "primary", id: "create-token" }, "Create token");
  const created = h("section", { id: "created", "aria-live": "polite", tabindex: -1 });
  const message = h("div", { id: "tokens-message", "aria-live": "polite" });
  const form = h(
    "form",
    { class: "card form", "aria-labelledby": "new-token-title" },
    h("h2", { id: "new-token-title" }, "New enrollment token"),
    field("Name", name),
    field("Valid for", lifetime),
    field("Enrollments allowed", maxUses),
    h("p", { id: "token-max-uses-hint", class: "hint" }, "1 to 1000000; empty: any number until it expires."),
    h("div", { class: "actions" }, submit),
  );
  const body = h("div", { id: "tokens", "aria-busy": "true" }, "Loading enrollment tokens…");
  fill(main, heading("Enrollment tokens"), form, created, message, h("h2", {}, "Every token"), body);

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    submit.disabled = true;
    fill(message);
    fill(created);
    try {
      const request = { name: name.value.trim(), expires_in_secs: Number(lifetime.value) };
      if (maxUses.value) request.max_uses = Number(maxUses.value);
      const token = await api("POST", "/api/v1/enrollment-tokens", request);
      showOnce(token);
      form.reset();
      await load();
    } catch (err) {
      fill(message, failed("create the token", err));
    } finally {
      submit.disabled = false;
    }
  });

  // The token is in this answer only: it is shown here, once, and kept nowhere.
  function showOnce(token) {
    const value = h("input", {
      id: "created-token",
      readonly: true,
      value: token.token,
      spellcheck: "false",
      "aria-describedby": "created-hint",
    });
    value.addEventListener("focus", () => value.select());
    const copied = h("span", { id: "copy-status", role: "status" });
    const copy = h(
      "button",
      {
        type: "button",
        id: "copy-token",
        onclick: async () => {
          try {
            await navigator.clipboard.writeText(value.value);
            copied.textContent = "Copied.";
          } catch {
            value.focus();
            copied.textContent = "Selected: press Ctrl+C (⌘C) to copy.";
          }
        },
      },
      "Copy",
    );
    fill(
      created,
      h(
        "div",
        { class: "notice info created" },
        h("strong", {}, `Token “${token.name}” created.`),
        h(
          "p",
          { id: "created-hint" },
          "Copy it now: it is shown only this once. Only its hash is kept, so it cannot be shown again. Give it to the machine's agent to enroll.",
        ),
        field("The token", value),
        h("div", { class: "actions" }, copy, copied),
      ),
    );
    created.focus();
  }

  function row(token) {
    return h(
      "tr",
      { "data-token-id": token.id },
      h("td", {}, token.name),
      h("td", { class: "state" }, badge("state", token.state)),
      h("td", { class: "num" }, token.max_uses != null ? `${token.use_count} of ${token.max_uses}` : String(token.use_count)),
      h("td", {}, time(token.expires_at)),
      h("td", {}, time(token.last_used_at)),
      h("td", {}, time(token.created_at)),
      h(
        "td",
        {},
        token.state === "active"
          ? h(
              "button",
              {
                type: "button",
                class: "revoke",
                "aria-label": `Revoke token ${token.name}`,
                onclick: async () => {
                  const yes = await ask(
                    `Revoke the token “${token.name}”?`,
                    "Machines can no longer enroll with it. Agents already enrolled with it keep working.",
                    "Revoke",
                  );
                  if (!yes) return;
                  fill(message);
                  try {
                    await api("DELETE", `/api/v1/enrollment-tokens/${encodeURIComponent(token.id)}`);
                    fill(message, notice("info", `Revoked “${token.name}”.`));
                    await load();
                  } catch (err) {
                    fill(message, failed("revoke the token", err));
                  }
                },
              },
              "Revoke",
            )
          : null,
      ),
    );
  }

  async function load() {
    try {
      const tokens = await api("GET", "/api/v1/enrollment-tokens");
      body.removeAttribute("aria-busy");
      if (!tokens.length) {
        fill(body, notice("empty", "No enrollment tokens yet.", "Create one above to enroll machines."));
        return;
      }
      fill(
        body,
        h(
          "table",
          { class: "list" },
          h("caption", { class: "visually-hidden" }, "Enrollment tokens"),
          h(
            "thead",
            {},
            h(
              "tr",
              {},
              ["Name", "State", "Enrollments", "Expires", "Last used", "Created", "Revoke"].map((c) =>
                h("th", { scope: "col", class: c === "Enrollments" ? "num" : null }, c),
              ),
            ),
          ),
          h("tbody", {}, tokens.map(row)),
        ),
      );
    } catch (err) {
      body.removeAttribute("aria-busy");
      fill(body, errorNotice(err, "The enrollment tokens could not be loaded."));
    }
  }
  load();
  return () => {};
}
