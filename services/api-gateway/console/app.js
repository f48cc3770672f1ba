// The console's shell: who is logged in, the hash routes, the live stream's state.
//
//   #/login            log in
//   #/fleet?...        agents and their presence (hostname_prefix, status, after)
//   #/incidents?...    incidents across the fleet (q, status, severity)
//   #/incidents/{id}   one incident
//   #/agents/{id}      one agent: presence, incidents, inventory, commands
//   #/audit?...        the audit log (admins; agent_id, before)
//   #/users            users (admins)
//   #/tokens           enrollment tokens (admins)

import { adminDenied, auditPage, tokensPage, usersPage } from "./admin.js";
import { agentPage } from "./agent.js";
import { api, can, query, setToken, token } from "./api.js";
import { fill, notice, refreshTimes } from "./dom.js";
import { Live } from "./live.js";
import { fleetPage, incidentPage, incidentsPage, loginPage } from "./pages.js";

const main = document.getElementById("main");
const nav = document.getElementById("nav");
const who = document.getElementById("who");
const liveStatus = document.getElementById("live");
const live = new Live();
let user = null;
let leave = () => {};
let signedOutReason = "";

const LIVE_TEXT = {
  connecting: "Connecting to live updates…",
  live: "Live",
  reconnecting: "Connection lost, reconnecting…",
  idle: "",
};

live.addEventListener("state", ({ detail }) => {
  liveStatus.textContent = LIVE_TEXT[detail] ?? "";
  liveStatus.dataset.state = detail;
  liveStatus.hidden = detail === "idle";
});

function go(page, params = {}) {
  location.hash = `#/${page}${query(params)}`;
}

function signedIn(me) {
  user = me;
  document.getElementById("who-email").textContent = me.email;
  document.getElementById("who-role").textContent = me.role;
  who.hidden = false;
  // Only what the role can use is offered.
  for (const link of nav.querySelectorAll("a")) {
    const page = link.dataset.nav;
    if (page === "audit" || page === "users" || page === "tokens") link.hidden = !can(me.role, page);
  }
  nav.hidden = false;
  live.start();
}

function signOut(reason = "") {
  setToken(null);
  user = null;
  live.stop();
  who.hidden = true;
  nav.hidden = true;
  signedOutReason = reason;
  if (location.hash.startsWith("#/login")) route();
  else location.hash = "#/login";
}

async function route() {
  leave();
  leave = () => {};
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, search = ""] = hash.split("?");
  const params = new URLSearchParams(search);
  const parts = path.split("/").filter(Boolean);

  if (!token()) {
    if (parts[0] !== "login") {
      location.hash = "#/login";
      return;
    }
    const reason = signedOutReason;
    signedOutReason = "";
    leave = loginPage(main, { reason, onLoggedIn: () => (location.hash = "#/fleet") });
    return;
  }
  if (!user) {
    try {
      signedIn(await api("GET", "/api/v1/auth/me"));
    } catch (err) {
      if (err.status === 401) return; // signed out by the API helper
      fill(main, notice("error", "The console could not start.", err.message, " Reload the page to retry."));
      return;
    }
  }
  for (const link of nav.querySelectorAll("a")) {
    const section = parts[0] === "agents" ? "fleet" : parts[0];
    if (link.dataset.nav === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  const context = { live, params, go, role: user.role };
  switch (parts[0]) {
    case "incidents":
      leave = parts[1] ? incidentPage(main, { ...context, id: parts[1] }) : incidentsPage(main, context);
      break;
    case "fleet":
      leave = fleetPage(main, context);
      break;
    case "agents":
      if (!parts[1]) {
        location.hash = "#/fleet";
        return;
      }
      leave = agentPage(main, { ...context, id: decodeURIComponent(parts[1]) });
      break;
    case "audit":
    case "users":
    case "tokens":
      if (!can(user.role, parts[0])) leave = adminDenied(main);
      else if (parts[0] === "audit") leave = auditPage(main, context);
      else if (parts[0] === "users") leave = usersPage(main, { ...context, email: user.email });
      else leave = tokensPage(main, context);
      break;
    default:
      location.hash = "#/fleet";
      return;
  }
  main.focus({ preventScroll: true });
}

document.getElementById("logout").addEventListener("click", () => signOut("You logged out."));
window.addEventListener("opspilot:signed-out", (event) => signOut(event.detail));
window.addEventListener("hashchange", route);
// A stream left open by a page the browser keeps (back/forward cache) holds one of the
// few connections a browser allows per host: six reloads would leave the seventh
// waiting. Close it when the page is hidden, and resume when it is shown again.
window.addEventListener("pagehide", () => live.stop());
window.addEventListener("pageshow", (event) => {
  if (event.persisted && user) live.start();
});
setInterval(() => refreshTimes(), 15000);
route();
