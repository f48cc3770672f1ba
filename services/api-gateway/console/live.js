// The live stream: one EventSource for the session, opened with a single-use ticket.
// After a drop it asks for a new ticket and resumes from the last event it saw
// (last_event_id), with bounded backoff, and says so while it is reconnecting.

import { api, query } from "./api.js";

export const TYPES = ["presence", "incident.created", "incident.updated"];

export class Live extends EventTarget {
  constructor(types = TYPES) {
    super();
    this.types = types;
    this.lastEventId = null;
    this.source = null;
    this.timer = null;
    this.failures = 0;
    this.stopped = true;
    this.opened = false;
    this.state = "idle";
  }

  start() {
    if (!this.stopped) return;
    this.stopped = false;
    this.connect();
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.source) this.source.close();
    this.source = null;
    this.lastEventId = null;
    this.opened = false;
    this.setState("idle");
  }

  setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: state }));
  }

  async connect() {
    if (this.stopped) return;
    this.setState(this.failures === 0 && this.state !== "reconnecting" ? "connecting" : "reconnecting");
    let ticket;
    try {
      ({ ticket } = await api("POST", "/api/v1/stream/tickets"));
    } catch {
      this.retry();
      return;
    }
    if (this.stopped) return;
    const source = new EventSource(
      `/api/v1/stream${query({ ticket, types: this.types.join(","), last_event_id: this.lastEventId })}`,
    );
    this.source = source;
    // Resuming without an id cannot replay what was missed: the pages reload instead.
    const missed = this.opened && this.lastEventId === null;
    source.onopen = () => {
      this.failures = 0;
      this.opened = true;
      this.setState("live");
      if (missed) this.dispatchEvent(new CustomEvent("reload"));
    };
    // The ticket is spent: never let the browser retry with it, ask for a new one.
    source.onerror = () => {
      source.close();
      if (this.source !== source) return;
      this.source = null;
      this.retry();
    };
    for (const type of this.types) {
      source.addEventListener(type, (event) => this.deliver(type, event));
    }
    source.addEventListener("lagged", (event) => {
      const data = parse(event.data);
      if (data && data.last_event_id != null) this.lastEventId = String(data.last_event_id);
    });
    source.addEventListener("reload", () => {
      // What was missed is no longer kept: start from now and let the pages reload.
      this.lastEventId = null;
      this.dispatchEvent(new CustomEvent("reload"));
    });
  }

  retry() {
    if (this.stopped) return;
    this.setState("reconnecting");
    const delay = Math.min(10000, 500 * 2 ** Math.min(this.failures, 5));
    this.failures += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }

  deliver(type, event) {
    if (event.lastEventId) this.lastEventId = event.lastEventId;
    const data = parse(event.data);
    if (data) this.dispatchEvent(new CustomEvent("message", { detail: { type, data } }));
  }
}

function parse(text) {
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}
