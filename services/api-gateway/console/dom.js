// Building the page from data: text always goes in as textContent, never as HTML.

/**
 * An element: h("a", { href: "#/x", class: "link" }, "text", child).
 * Attributes starting with "on" are listeners; strings and numbers become text nodes.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key === "class") {
      el.className = value;
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/**
 * Records (as a User Timing mark, `opspilot:{name}`) when a page first shows what it
 * loaded, once the browser has painted it: the wait an operator sees, from the start
 * of the navigation. `make bench` reads these marks; they cost nothing otherwise.
 */
export function markShown(name) {
  requestAnimationFrame(() => setTimeout(() => performance.mark(`opspilot:${name}`), 0));
}

/** Replaces an element's content. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const units = [
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
  ["second", 1],
];
const relative = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const absolute = new Intl.DateTimeFormat(undefined, {
  year: "numeric",
  month: "short",
  day: "numeric",
  hour: "2-digit",
  minute: "2-digit",
  second: "2-digit",
  timeZoneName: "short",
});

function relativeText(date) {
  const seconds = (date.getTime() - Date.now()) / 1000;
  if (Math.abs(seconds) < 5) return "just now";
  for (const [unit, size] of units) {
    if (Math.abs(seconds) >= size || unit === "second") return relative.format(Math.round(seconds / size), unit);
  }
  return "";
}

/** A <time> saying "3 minutes ago", with the exact time in the viewer's zone as its title. */
export function time(iso, empty = "never") {
  if (!iso) return h("span", { class: "muted" }, empty);
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return h("span", {}, iso);
  return h("time", { datetime: iso, title: absolute.format(date), "data-relative": "" }, relativeText(date));
}

/** The exact time in the viewer's zone, as text. */
export function exactTime(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? String(iso) : absolute.format(date);
}

/** "3 h 5 min", "42 s": a length of time for reading. */
export function duration(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${m % 60} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/**
 * Asks before a change in the page's #ask dialog: `title` names the change and its
 * target, `what` its effect, `yes` labels the button that does it. Resolves true when
 * the admin chose it (Escape or Cancel: false).
 */
export function ask(title, what, yes) {
  const dialog = document.getElementById("ask");
  document.getElementById("ask-title").textContent = title;
  document.getElementById("ask-what").textContent = what;
  document.getElementById("ask-yes").textContent = yes;
  dialog.returnValue = "";
  return new Promise((resolve) => {
    dialog.addEventListener("close", () => resolve(dialog.returnValue === "yes"), { once: true });
    dialog.showModal();
    document.getElementById("ask-cancel").focus();
  });
}

/** Keeps every relative time on the page current. */
export function refreshTimes(root = document) {
  for (const el of root.querySelectorAll("time[data-relative]")) {
    el.textContent = relativeText(new Date(el.getAttribute("datetime")));
  }
}

/** A message box: kind is "error", "empty" or "info". */
export function notice(kind, title, ...what) {
  return h(
    "div",
    { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status" },
    h("strong", {}, title),
    what.length ? h("p", {}, ...what) : null,
  );
}

/** JSON for reading (context, params, results). */
export function pretty(value) {
  if (value === undefined || value === null) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}
