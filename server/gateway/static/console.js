// Podium console: one page, drawn from the address (deep links survive a reload).
// Reads everything through the gateway: POST /v1/<RPC> (protobuf JSON mapping) and
// Server-Sent Events (GET /v1/runs/ID/events, GET /v1/events). No library, no build.
"use strict";

// -- Routing ------------------------------------------------------------------------------
const routes = [
  [/^\/(runs)?$/, runsPage],
  [/^\/runs\/([^/]+)$/, runPage],
  [/^\/approvals$/, approvalsPage],
  [/^\/definitions$/, definitionsPage],
  [/^\/definitions\/([^/]+)$/, definitionPage],
  [/^\/agents$/, agentsPage],
  [/^\/usage$/, usagePage],
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
  // A page's requests refused together (the usage page sends two): the first shows the
  // form, the others leave it, and what is being typed into it, alone.
  if (main().querySelector("form.login")) return;
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
      runUsage(current),
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

  const approvalsHeading = h("h2", {}, "Pending approvals");
  async function loadApprovals() {
    const { approvals: pending = [] } = await api("ListApprovals", { runId, states: ["STATE_PENDING"] });
    showApprovalCards(approvals, pending, (approval) => approvalCard(approval, () => refresh()), {
      heading: approvalsHeading,
    });
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

document.getElementById("signout").hidden = !sessionStorage.getItem("podium.signedIn");
route();
