// The only door: every read and write goes through the gateway's /api/v1, with the
// access token kept for this tab only (sessionStorage).

const TOKEN_KEY = "opspilot.access_token";

export function token() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(value) {
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  else sessionStorage.removeItem(TOKEN_KEY);
}

/** A failed request: the HTTP status (0 when the gateway was not reached) and its problem document. */
export class ApiError extends Error {
  constructor(status, problem) {
    super(problem.detail || problem.title || `The gateway answered ${status}`);
    this.status = status;
    this.problem = problem;
    this.type = typeof problem.type === "string" ? problem.type.replace("urn:opspilot:problem:", "") : "";
  }
}

/** Sends a request to the API; resolves with the JSON body (null when empty). */
export async function api(method, path, body) {
  const headers = { Accept: "application/json" };
  const bearer = token();
  if (bearer) headers.Authorization = `Bearer ${bearer}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch {
    throw new ApiError(0, {
      title: "The gateway cannot be reached",
      detail: "The gateway cannot be reached. Check the network or that the gateway runs, then retry.",
    });
  }
  const text = await response.text();
  let data = null;
  if (text) {
    try {
      data = JSON.parse(text);
    } catch {
      data = { detail: text };
    }
  }
  if (!response.ok) {
    const error = new ApiError(response.status, data && typeof data === "object" ? data : {});
    if (response.status === 401 && bearer && !path.endsWith("/auth/login")) {
      setToken(null);
      window.dispatchEvent(new CustomEvent("opspilot:signed-out", { detail: "Your session ended; log in again." }));
    }
    throw error;
  }
  return data;
}

/** A query string from the defined, non-empty values of an object. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [key, value] of Object.entries(params)) {
    if (value !== undefined && value !== null && value !== "") q.set(key, String(value));
  }
  const s = q.toString();
  return s ? `?${s}` : "";
}

/** What a role may do, as the API enforces it. */
export function can(role, what) {
  const operator = role === "operator" || role === "admin";
  switch (what) {
    case "execute":
    case "analyze":
    case "acknowledge":
    case "resolve":
      return operator;
    case "audit":
    case "users":
    case "tokens":
      return role === "admin";
    default:
      return false;
  }
}
