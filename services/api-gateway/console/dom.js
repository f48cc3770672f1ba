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
