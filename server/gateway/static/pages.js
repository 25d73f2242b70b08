// Podium console: the approvals, definitions and agents pages (helpers in common.js).
"use strict";

// -- Approvals ------------------------------------------------------------------------------
function approvalCard(approval, after) {
  const comment = h("textarea", { name: "comment", rows: 2, placeholder: "comment (optional)" });
  const answer = h("input", { name: "answer", placeholder: "answer (optional)" });
  const status = h("p", { class: "error", hidden: true });
  // A budget approval is approved with higher limits (left empty: unchanged).
  const budget = approval.kind === "KIND_BUDGET";
  const maxTokens = budget ? h("input", { name: "budgetMaxTokens", type: "number", min: 0, step: 1, placeholder: "new max tokens" }) : null;
  const maxCost = budget ? h("input", { name: "budgetMaxCostUsd", type: "number", min: 0, step: "any", placeholder: "new max cost (USD)" }) : null;
  async function decide(decision) {
    const request = { approvalId: approval.id, decision, comment: comment.value };
    if (answer.value) request.input = { answer: answer.value };
    if (maxTokens?.value) request.budgetMaxTokens = maxTokens.value;
    if (maxCost?.value) request.budgetMaxCostUsd = Number(maxCost.value);
    try {
      await api("DecideApproval", request);
      after();
    } catch (error) {
      status.replaceWith(errorBox(error));
    }
  }
  return h(
    "div",
    { class: "approval", id: `approval-${approval.id}`, "data-approval": approval.id },
    h("p", {}, h("strong", {}, short(approval.kind)), ` step ${approval.stepId} of run `, h("a", { href: `/runs/${approval.runId}` }, approval.runId.slice(0, 8))),
    approval.prompt ? h("p", {}, approval.prompt) : null,
    approval.subject ? h("pre", {}, JSON.stringify(approval.subject, null, 2)) : null,
    comment,
    answer,
    budget ? h("div", { class: "buttons" }, maxTokens, maxCost) : null,
    h(
      "div",
      { class: "buttons" },
      h("button", { type: "button", class: "approve", onclick: () => decide("DECISION_APPROVE") }, "Approve"),
      h("button", { type: "button", class: "reject", onclick: () => decide("DECISION_REJECT") }, "Reject"),
    ),
    status,
  );
}

// Shows a card per approval in `container`: the cards already there stay where they are,
// never taken out of the page (a card being typed in keeps its text, its caret and its
// focus while events refresh the page), those no longer pending go, new ones come last.
// `heading`: shown above the cards while there are any; `none`: shown when there are none.
function showApprovalCards(container, approvals, make, { heading = null, none = null } = {}) {
  const wanted = new Set(approvals.map((a) => a.id));
  const shown = new Map();
  for (const card of container.querySelectorAll(".approval")) {
    if (wanted.has(card.dataset.approval)) shown.set(card.dataset.approval, card);
    else card.remove();
  }
  if (heading && approvals.length && !heading.isConnected) container.prepend(heading);
  if (heading && !approvals.length) heading.remove();
  if (none && approvals.length) none.remove();
  if (none && !approvals.length && !none.isConnected) container.append(none);
  for (const approval of approvals) {
    if (!shown.has(approval.id)) container.append(make(approval));
  }
}

async function approvalsPage() {
  const list = h("div");
  show(h("h1", {}, "Pending approvals"), list);
  const none = h("p", { class: "muted" }, "Nothing waits for a decision.");
  async function load() {
    const { approvals = [] } = await api("ListApprovals", { states: ["STATE_PENDING"], pageSize: 100 });
    showApprovalCards(list, approvals, (a) => approvalCard(a, load), { none });
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
  // Versions are numbered 1..latest; an older one shown still lists them all.
  const latest = version ? (await api("GetDefinition", { name })).definition.version : definition.version;
  const versions = h(
    "nav",
    { class: "versions" },
    "Versions: ",
    Array.from({ length: latest }, (_, i) => latest - i).map((v) =>
      h(
        "a",
        {
          href: `/definitions/${encodeURIComponent(name)}?version=${v}`,
          class: v === definition.version ? "active" : "",
          "data-version": v,
        },
        `v${v}`,
      ),
    ),
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
          : step.plan
            ? `planned by ${step.plan.agent}`
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
