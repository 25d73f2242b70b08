// Podium console: helpers shared by the pages (DOM, API calls, event streams).
// Classic scripts: what is declared here is global to graph.js, pages.js and console.js.
"use strict";

const main = () => document.getElementById("main");
let cleanup = []; // closers of the current page (event sources, timers)
const MAX_LOG_ITEMS = 5000; // a run page shows the last events of a very long log
const MAX_OUTPUT_CHARS = 200000; // and the tail of each step's streamed output

// -- DOM helpers (text only: nothing from the server is parsed as HTML) ----------------
function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (value === true) node.setAttribute(key, "");
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function show(...nodes) {
  main().replaceChildren(...nodes.filter(Boolean));
}

const short = (name) => (name || "").replace(/^(STATE_|TYPE_|KIND_|DECISION_|PROTOCOL_)/, "");
const badge = (state) => h("span", { class: `badge state-${short(state).toLowerCase()}` }, short(state));
const when = (time) => (time ? new Date(time).toLocaleString() : "");

function seconds(start, end) {
  if (!start) return "";
  const ms = (end ? new Date(end) : new Date()) - new Date(start);
  return ms < 1000 ? `${Math.max(0, ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

// -- API --------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, body) {
    super(body.message || `HTTP ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(method, body) {
  const response = await fetch(`/v1/${method}`, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body || {}),
    credentials: "same-origin",
  });
  const text = await response.text();
  const data = text ? JSON.parse(text) : {};
  if (!response.ok) {
    const error = new ApiError(response.status, data);
    if (response.status === 401) signIn(error.message);
    throw error;
  }
  return data;
}

function errorBox(error) {
  const violations = (error.body?.details || []).flatMap((d) => d.fieldViolations || []);
  return h(
    "div",
    { class: "error", role: "alert" },
    h("strong", {}, error.message),
    violations.length
      ? h("ul", {}, violations.map((v) => h("li", {}, `${v.field}: ${v.description}`)))
      : null,
  );
}

// An event stream that outlives server restarts. The browser reconnects by itself after
// a dropped connection (sending Last-Event-ID); when it gives up (an HTTP error while
// the server starts, or an UNAVAILABLE error message) the stream is opened again after
// RETRY_MS, resumable ones after the last event seen. onOpen runs on every (re)connect.
const RETRY_MS = 2000;
function follow(url, { onEvent, onError, onOpen, resumable = false }) {
  let lastId = null;
  let source = null;
  let stopped = false;
  let timer = null;
  const retry = () => {
    if (!stopped) timer = setTimeout(open, RETRY_MS);
  };
  function open() {
    const separator = url.includes("?") ? "&" : "?";
    source = new EventSource(
      resumable && lastId !== null ? `${url}${separator}after_sequence=${lastId}` : url,
    );
    source.onopen = () => onOpen?.();
    source.onmessage = (message) => {
      if (message.lastEventId) lastId = message.lastEventId;
      onEvent(JSON.parse(message.data));
    };
    // The watched run ended (its terminal event was sent): nothing more will come.
    source.addEventListener("end", () => source.close());
    source.addEventListener("error", (message) => {
      if (message.data) {
        const status = JSON.parse(message.data);
        source.close();
        if (status.code === 14) retry();
        else onError?.(status);
      } else if (source.readyState === EventSource.CLOSED) {
        retry();
      }
    });
  }
  cleanup.push(() => {
    stopped = true;
    clearTimeout(timer);
    source?.close();
  });
  open();
}

function debounce(fn, ms) {
  let timer = null;
  const run = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  cleanup.push(() => clearTimeout(timer));
  return run;
}
