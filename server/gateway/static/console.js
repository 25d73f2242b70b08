// Podium console: one page, drawn from the address (deep links survive a reload).
// Reads everything through the gateway: POST /v1/<RPC> (protobuf JSON mapping) and
// Server-Sent Events (GET /v1/runs/ID/events, GET /v1/events). No library, no build.
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

// -- Routing ------------------------------------------------------------------------------
const routes = [
  [/^\/(runs)?$/, runsPage],
  [/^\/runs\/([^/]+)$/, runPage],
  [/^\/approvals$/, approvalsPage],
  [/^\/definitions$/, definitionsPage],
  [/^\/definitions\/([^/]+)$/, definitionPage],
  [/^\/agents$/, agentsPage],
  [/^\/login$/, () => signIn("")],
];

function route() {
  for (const close of cleanup) close();
  cleanup = [];
  const path = location.pathname;
  const section = path.split("/")[1] || "runs";
  for (const link of document.querySelectorAll("[data-nav]")) {
    link.classList.toggle("active", link.dataset.nav === section);
  }
  for (const [pattern, page] of routes) {
    const match = pattern.exec(path);
    if (match) {
      page(...match.slice(1).map(decodeURIComponent)).catch((error) => {
        if (!(error instanceof ApiError && error.status === 401)) show(errorBox(error));
      });
      return;
    }
  }
  show(h("p", {}, "No such page. "), h("a", { href: "/" }, "Runs"));
}

function go(path) {
  history.pushState({}, "", path);
  document.getElementById("signout").hidden = !sessionStorage.getItem("podium.signedIn");
route();
}

document.addEventListener("click", (event) => {
  const link = event.target.closest("a[href^='/']");
  if (!link || event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
  event.preventDefault();
  go(link.getAttribute("href"));
});
window.addEventListener("popstate", route);

// -- Sign in ------------------------------------------------------------------------------
async function signIn(message) {
  for (const close of cleanup) close();
  cleanup = [];
  const back = location.pathname === "/login" ? "/" : location.pathname + location.search;
  const key = h("input", { type: "password", name: "key", autocomplete: "off", required: true });
  const status = h("p", { class: "error", role: "alert", hidden: !message }, message || "");
  const form = h(
    "form",
    { class: "login" },
    h("h1", {}, "Sign in"),
    h("p", {}, "This Podium server requires an API key."),
    h("label", {}, "API key ", key),
    h("button", { type: "submit" }, "Sign in"),
    status,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const response = await fetch("/console/session", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({ key: key.value }),
    });
    if (response.ok) {
      sessionStorage.setItem("podium.signedIn", "1");
      document.getElementById("signout").hidden = false;
      go(back);
      return;
    }
    const body = await response.json().catch(() => ({}));
    status.textContent = `The API key was refused: ${body.message || response.statusText}`;
    status.hidden = false;
  });
  show(form);
  key.focus();
}

document.getElementById("signout").addEventListener("click", async () => {
  await fetch("/console/session", { method: "DELETE" });
  sessionStorage.removeItem("podium.signedIn");
  document.getElementById("signout").hidden = true;
  go("/login");
});

// -- Runs ---------------------------------------------------------------------------------
const RUN_STATES = ["CREATED", "RUNNING", "PAUSED", "SUCCEEDED", "FAILED", "CANCELLED"];

async function runsPage() {
  const query = new URLSearchParams(location.search);
  const state = h(
    "select",
    { name: "state" },
    h("option", { value: "" }, "any state"),
    RUN_STATES.map((s) => h("option", { value: s, selected: query.get("state") === s }, s)),
  );
  const definition = h("input", {
    name: "definition",
    placeholder: "definition",
    value: query.get("definition") || "",
  });
  const label = h("input", {
    name: "label",
    placeholder: "label key=value",
    value: query.get("label") || "",
  });
  const form = h(
    "form",
    { class: "filters" },
    state,
    definition,
    label,
    h("button", { type: "submit" }, "Filter"),
  );
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    if (state.value) next.set("state", state.value);
    if (definition.value) next.set("definition", definition.value.trim());
    if (label.value) next.set("label", label.value.trim());
    go(`/runs${next.toString() ? `?${next}` : ""}`);
  });
  const request = { pageSize: 100 };
  const watch = new URLSearchParams();
  if (query.get("state")) {
    request.states = [`STATE_${query.get("state")}`];
  }
  if (query.get("definition")) {
    request.definitionName = query.get("definition");
    watch.set("definition_name", query.get("definition"));
  }
  if (query.get("label")) {
    const [k, ...v] = query.get("label").split("=");
    request.labels = { [k]: v.join("=") };
    watch.append("label", query.get("label"));
  }
  const body = h("tbody");
  const table = h(
    "table",
    { class: "runs" },
    h("thead", {}, h("tr", {}, ["Run", "Definition", "State", "Created", "Duration", "Labels"].map((c) => h("th", {}, c)))),
    body,
  );
  const status = h("p", { class: "muted" });
  show(h("h1", {}, "Runs"), form, table, status);

  async function load() {
    const { runs = [] } = await api("ListRuns", request);
    body.replaceChildren(
      ...runs.map((run) =>
        h(
          "tr",
          { "data-run": run.id, "data-state": run.state },
          h("td", {}, h("a", { href: `/runs/${run.id}` }, run.id.slice(0, 8))),
          h("td", {}, run.definitionName ? `${run.definitionName} v${run.definitionVersion}` : "(inline)"),
          h("td", {}, badge(run.state)),
          h("td", {}, when(run.createTime)),
          h("td", {}, seconds(run.startTime, run.endTime)),
          h("td", {}, Object.entries(run.labels || {}).map(([k, v]) => h("span", { class: "label" }, `${k}=${v}`))),
        ),
      ),
    );
    status.textContent = runs.length ? "" : "No runs match.";
  }
  await load();
  // Live: every event of a matching run refreshes the list (at most a few times a second).
  const reload = debounce(() => load().catch(() => {}), 250);
  follow(`/v1/events${watch.toString() ? `?${watch}` : ""}`, { onEvent: reload, onOpen: reload });
}

async function runPage(runId) {
  const { run } = await api("GetRun", { runId });
  const header = h("div", { class: "run-header" });
  const graph = h("div", { class: "graph" });
  const steps = h("div", { class: "steps" });
  const approvals = h("div", { class: "approvals" });
  const log = h("ol", { class: "events" });
  const outputs = new Map();
  const outputBox = h("div", { class: "outputs" });
  show(
    header,
    h("h2", {}, "Graph"),
    graph,
    approvals,
    h("h2", {}, "Steps"),
    steps,
    h("h2", {}, "Agent output"),
    outputBox,
    h("h2", {}, "Events"),
    log,
  );

  function render(current) {
    header.replaceChildren(
      h("h1", {}, "Run ", h("code", {}, current.id), " ", badge(current.state)),
      h(
        "p",
        { class: "muted" },
        current.definitionName ? `${current.definitionName} v${current.definitionVersion} · ` : "inline plan · ",
        `created ${when(current.createTime)}`,
        current.startTime ? ` · ${seconds(current.startTime, current.endTime)}` : "",
        current.parentRunId ? [" · parent ", h("a", { href: `/runs/${current.parentRunId}` }, current.parentRunId.slice(0, 8))] : "",
      ),
      current.error ? h("p", { class: "error" }, `${current.error.code}: ${current.error.message}`) : "",
    );
    const nodes = (current.steps || []).map((step) => ({
      id: step.stepId,
      dependsOn: step.dependsOn || [],
      state: short(step.state),
      label: `${short(step.state)}${step.agent ? ` · ${step.agent}` : ""}`,
      detail: [
        step.startTime ? seconds(step.startTime, step.endTime) : "",
        step.attempt > 1 ? `attempt ${step.attempt}/${step.maxAttempts}` : "",
        step.cached ? "cache hit" : "",
        step.childRunId ? "child run ↗" : "",
      ]
        .filter(Boolean)
        .join(" · "),
      href: step.childRunId ? `/runs/${step.childRunId}` : undefined,
    }));
    graph.replaceChildren(window.PodiumGraph.drawGraph(nodes));
    steps.replaceChildren(
      h(
        "table",
        {},
        h("thead", {}, h("tr", {}, ["Step", "State", "Agent", "Attempts", "Duration", "Cache", "Child run"].map((c) => h("th", {}, c)))),
        h(
          "tbody",
          {},
          (current.steps || []).map((step) =>
            h(
              "tr",
              {},
              h("td", {}, step.stepId),
              h("td", {}, badge(step.state)),
              h("td", {}, step.agent || ""),
              h("td", {}, `${step.attempt || 0}/${step.maxAttempts || 1}`),
              h("td", {}, seconds(step.startTime, step.endTime)),
              h("td", {}, step.cached ? "hit" : ""),
              h("td", {}, step.childRunId ? h("a", { href: `/runs/${step.childRunId}` }, step.childRunId.slice(0, 8)) : ""),
            ),
          ),
        ),
      ),
    );
  }

  async function loadApprovals() {
    const { approvals: pending = [] } = await api("ListApprovals", { runId, states: ["STATE_PENDING"] });
    // Cards already shown stay as they are (with what was typed in them).
    const shown = new Map(
      [...approvals.querySelectorAll(".approval")].map((card) => [card.dataset.approval, card]),
    );
    approvals.replaceChildren(
      ...(pending.length ? [h("h2", {}, "Pending approvals")] : []),
      ...pending.map((approval) => shown.get(approval.id) || approvalCard(approval, () => refresh())),
    );
  }

  const refresh = debounce(async () => {
    try {
      const { run: current } = await api("GetRun", { runId });
      render(current);
      await loadApprovals();
    } catch (error) {
      if (!(error instanceof ApiError && error.status === 401)) header.append(errorBox(error));
    }
  }, 100);

  render(run);
  await loadApprovals();
  // The whole log, then live; EventSource resumes with Last-Event-ID after a drop or a
  // server restart, so nothing is shown twice or missed.
  const seen = new Set();
  function onEvent(event) {
    if (seen.has(event.sequence)) return; // never twice, whatever the reconnects
    seen.add(event.sequence);
    const step = event.stepId ? ` ${event.stepId}` : "";
    if (event.type === "TYPE_STEP_OUTPUT_CHUNK") {
      let box = outputs.get(event.stepId);
      if (!box) {
        box = h("pre", { class: "output", "data-step": event.stepId });
        outputs.set(event.stepId, box);
        outputBox.append(h("h3", {}, event.stepId), box);
      }
      // The tail of a long output (a browser tab is not a log store).
      box.textContent = (box.textContent + (event.outputChunk?.text || "")).slice(-MAX_OUTPUT_CHARS);
      return;
    }
    const detail = event.progress?.message || event.error?.message || event.approval?.decision || "";
    log.append(
      h(
        "li",
        { "data-sequence": event.sequence },
        h("span", { class: "seq" }, `#${event.sequence}`),
        ` ${new Date(event.time).toLocaleTimeString()} ${short(event.type)}${step}`,
        detail ? h("span", { class: "muted" }, ` ${short(detail)}`) : null,
      ),
    );
    while (log.children.length > MAX_LOG_ITEMS) log.firstChild.remove();
    if (event.type !== "TYPE_STEP_PROGRESS") refresh();
  }
  // The whole log, then live, resumed after the last event seen when the connection
  // drops or the server restarts (nothing shown twice or missed).
  follow(`/v1/runs/${encodeURIComponent(runId)}/events`, {
    onEvent,
    onError: (status) => log.append(h("li", { class: "error" }, status.message)),
    onOpen: refresh,
    resumable: true,
  });
}

// -- Approvals ------------------------------------------------------------------------------
function approvalCard(approval, after) {
  const comment = h("textarea", { name: "comment", rows: 2, placeholder: "comment (optional)" });
  const answer = h("input", { name: "answer", placeholder: "answer (optional)" });
  const status = h("p", { class: "error", hidden: true });
  async function decide(decision) {
    const request = { approvalId: approval.id, decision, comment: comment.value };
    if (answer.value) request.input = { answer: answer.value };
    try {
      await api("DecideApproval", request);
      after();
    } catch (error) {
      status.replaceWith(errorBox(error));
    }
  }
  return h(
    "div",
    { class: "approval", "data-approval": approval.id },
    h("p", {}, h("strong", {}, short(approval.kind)), ` step ${approval.stepId} of run `, h("a", { href: `/runs/${approval.runId}` }, approval.runId.slice(0, 8))),
    approval.prompt ? h("p", {}, approval.prompt) : null,
    approval.subject ? h("pre", {}, JSON.stringify(approval.subject, null, 2)) : null,
    comment,
    answer,
    h(
      "div",
      { class: "buttons" },
      h("button", { type: "button", class: "approve", onclick: () => decide("DECISION_APPROVE") }, "Approve"),
      h("button", { type: "button", class: "reject", onclick: () => decide("DECISION_REJECT") }, "Reject"),
    ),
    status,
  );
}

async function approvalsPage() {
  const list = h("div");
  show(h("h1", {}, "Pending approvals"), list);
  async function load() {
    const { approvals = [] } = await api("ListApprovals", { states: ["STATE_PENDING"], pageSize: 100 });
    const shown = new Map(
      [...list.querySelectorAll(".approval")].map((card) => [card.dataset.approval, card]),
    );
    list.replaceChildren(
      ...(approvals.length
        ? approvals.map((a) => shown.get(a.id) || approvalCard(a, load))
        : [h("p", { class: "muted" }, "Nothing waits for a decision.")]),
    );
  }
  await load();
  const reload = debounce(() => load().catch(() => {}), 250);
  follow("/v1/events", { onEvent: reload, onOpen: reload });
}

// -- Definitions and agents ------------------------------------------------------------------
async function definitionsPage() {
  const { definitions = [] } = await api("ListDefinitions", { pageSize: 200 });
  show(
    h("h1", {}, "Definitions"),
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, ["Name", "Latest version", "Steps", "Created", "Description"].map((c) => h("th", {}, c)))),
      h(
        "tbody",
        {},
        definitions.map((d) =>
          h(
            "tr",
            {},
            h("td", {}, h("a", { href: `/definitions/${encodeURIComponent(d.name)}` }, d.name)),
            h("td", {}, `v${d.version}`),
            h("td", {}, (d.steps || []).length),
            h("td", {}, when(d.createTime)),
            h("td", {}, d.description || ""),
          ),
        ),
      ),
    ),
  );
}

async function definitionPage(name) {
  const version = Number(new URLSearchParams(location.search).get("version") || 0);
  const { definition } = await api("GetDefinition", { name, version });
  const versions = h(
    "nav",
    { class: "versions" },
    "Versions: ",
    Array.from({ length: definition.version ? Math.max(definition.version, version) : 0 }, (_, i) => i + 1)
      .reverse()
      .map((v) => h("a", { href: `/definitions/${encodeURIComponent(name)}?version=${v}`, class: v === definition.version ? "active" : "" }, `v${v}`)),
  );
  const nodes = (definition.steps || []).map((step) => ({
    id: step.id,
    dependsOn: step.dependsOn || [],
    state: "defined",
    label: step.agent
      ? `agent ${step.agent}`
      : step.skill
        ? `skill ${step.skill}`
        : step.orchestration
          ? `runs ${step.orchestration.name}`
          : "",
    detail: [
      step.forEach ? "for each" : "",
      step.when ? "conditional" : "",
      step.checkpoint ? `checkpoint ${short(step.checkpoint.when).replace("WHEN_", "")}` : "",
    ]
      .filter(Boolean)
      .join(" · "),
    href: step.orchestration ? `/definitions/${encodeURIComponent(step.orchestration.name)}` : undefined,
  }));
  show(
    h("h1", {}, `${definition.name} v${definition.version}`),
    definition.description ? h("p", {}, definition.description) : null,
    versions,
    h("div", { class: "graph" }, window.PodiumGraph.drawGraph(nodes)),
    h("h2", {}, "Definition"),
    h("pre", {}, JSON.stringify(definition, null, 2)),
  );
}

async function agentsPage() {
  const { agents = [] } = await api("ListAgents", { pageSize: 200 });
  show(
    h("h1", {}, "Agents"),
    h(
      "table",
      {},
      h("thead", {}, h("tr", {}, ["Name", "Skills", "Endpoint", "Protocol", "Source", "Active tasks"].map((c) => h("th", {}, c)))),
      h(
        "tbody",
        {},
        agents.map((a) =>
          h(
            "tr",
            { "data-agent": a.name },
            h("td", {}, a.name),
            h("td", {}, (a.skills || []).map((s) => h("span", { class: "label" }, s))),
            h("td", {}, h("code", {}, a.endpoint || "")),
            h("td", {}, short(a.protocol)),
            h("td", {}, short(a.source).replace("SOURCE_", "")),
            h("td", {}, a.activeTasks || 0),
          ),
        ),
      ),
    ),
  );
}

document.getElementById("signout").hidden = !sessionStorage.getItem("podium.signedIn");
route();
