// Podium console: the organization's usage page and a run's usage (helpers in common.js).
"use strict";

const USAGE_RANGES = [1, 7, 30]; // days
const USAGE_GROUPS = {
  day: ["DIMENSION_DAY", "Day", (row) => row.day],
  definition: ["DIMENSION_DEFINITION", "Definition", (row) => row.definitionName || "(inline)"],
  agent: ["DIMENSION_AGENT", "Agent", (row) => row.agent],
  model: ["DIMENSION_MODEL", "Model", (row) => row.model || "(none)"],
};

// int64 fields arrive as strings (protobuf JSON mapping); a count shown with separators.
const count = (value) => Number(value || 0).toLocaleString("en-US");
const usd = (value) => `$${Number(value || 0).toFixed(4)}`;
const tokensOf = (usage) => Number(usage?.inputTokens || 0) + Number(usage?.outputTokens || 0);

// "12 in · 8 out · $0.0200": a RunUsage in one line.
function usageText(usage) {
  return `${count(usage?.inputTokens)} in · ${count(usage?.outputTokens)} out · ${usd(usage?.costUsd)}`;
}

function usageCells(row) {
  return [
    h("td", { class: "num", "data-col": "input" }, count(row.usage?.inputTokens)),
    h("td", { class: "num", "data-col": "output" }, count(row.usage?.outputTokens)),
    h("td", { class: "num", "data-col": "cost" }, usd(row.usage?.costUsd)),
    h("td", { class: "num", "data-col": "attempts" }, count(row.stepAttempts)),
    h("td", { class: "num", "data-col": "cache-hits" }, count(row.cacheHits)),
    h("td", { class: "num", "data-col": "saved" }, count(tokensOf(row.saved))),
  ];
}

async function usagePage() {
  const query = new URLSearchParams(location.search);
  const days = USAGE_RANGES.includes(Number(query.get("days"))) ? Number(query.get("days")) : 30;
  const by = USAGE_GROUPS[query.get("by")] ? query.get("by") : "day";
  const [dimension, heading, key] = USAGE_GROUPS[by];
  const select = (name, options, current) =>
    h(
      "select",
      { name, onchange: () => reload() },
      options.map(([value, text]) => h("option", { value, selected: String(current) === String(value) }, text)),
    );
  const range = select("days", USAGE_RANGES.map((d) => [d, d === 1 ? "last day" : `last ${d} days`]), days);
  const group = select("by", Object.entries(USAGE_GROUPS).map(([k, v]) => [k, `by ${v[1].toLowerCase()}`]), by);
  function reload() {
    go(`/usage?${new URLSearchParams({ days: range.value, by: group.value })}`);
  }
  const end = new Date();
  const start = new Date(end.getTime() - days * 86400000);
  const [{ rows = [] }, { rows: totals = [] }] = await Promise.all([
    api("GetUsage", { startTime: start.toISOString(), endTime: end.toISOString(), groupBy: [dimension] }),
    api("GetUsage", { startTime: start.toISOString(), endTime: end.toISOString() }),
  ]);
  const total = totals[0] || {};
  const columns = [heading, "Input tokens", "Output tokens", "Cost (USD)", "Attempts", "Cache hits", "Saved tokens"];
  show(
    h("h1", {}, "Usage"),
    h("form", { class: "filters" }, range, group),
    h(
      "p",
      { class: "muted" },
      `Model usage the agents reported for the step attempts started from ${when(start.toISOString())} to ${when(end.toISOString())}.`,
    ),
    h(
      "table",
      { class: "usage", "data-by": by },
      h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
      h(
        "tbody",
        {},
        rows.map((row) => h("tr", { "data-key": key(row) }, h("td", {}, key(row)), usageCells(row))),
      ),
      h("tfoot", {}, h("tr", { class: "total" }, h("th", {}, "Total"), usageCells(total))),
    ),
    rows.length ? null : h("p", { class: "muted" }, "No step attempts in this range."),
  );
}

// The run page's usage: its total with child runs, what its cache hits saved, its budget.
function runUsage(run) {
  const ownDiffers = tokensOf(run.usage) !== tokensOf(run.totalUsage); // child runs used some
  const parts = [
    h(
      "p",
      { class: "usage-total" },
      h("strong", {}, "Usage "),
      usageText(run.totalUsage),
      ownDiffers ? h("span", { class: "muted" }, ` (this run alone: ${usageText(run.usage)})`) : null,
    ),
  ];
  if (tokensOf(run.savedUsage) || Number(run.savedUsage?.costUsd || 0)) {
    parts.push(h("p", { class: "usage-saved" }, h("strong", {}, "Saved by cache hits "), usageText(run.savedUsage)));
  }
  const budget = run.budget;
  if (budget) {
    const limits = [
      Number(budget.maxTokens || 0) ? `${count(budget.usedTokens)} / ${count(budget.maxTokens)} tokens` : `${count(budget.usedTokens)} tokens`,
      Number(budget.maxCostUsd || 0) ? `${usd(budget.usedCostUsd)} / ${usd(budget.maxCostUsd)}` : usd(budget.usedCostUsd),
    ];
    parts.push(
      h(
        "p",
        { class: `budget${budget.exceeded ? " exceeded" : ""}`, "data-exceeded": String(Boolean(budget.exceeded)) },
        h("strong", {}, "Budget "),
        limits.join(" · "),
        ` · on exceed ${short(budget.onExceed).replace("ON_EXCEED_", "").toLowerCase() || "pause"}`,
        budget.exceeded ? h("span", { class: "flag" }, "EXCEEDED") : null,
        budget.budgetRunId && budget.budgetRunId !== run.id
          ? [" · drawn from ", h("a", { href: `/runs/${budget.budgetRunId}` }, budget.budgetRunId.slice(0, 8))]
          : null,
        budget.approvalId
          ? [
              " · ",
              h(
                "a",
                {
                  href: "/approvals",
                  class: "budget-approval",
                  "data-approval": budget.approvalId,
                  onclick: (event) => {
                    // The card is on this page (the run's pending approvals): go to it.
                    const card = document.getElementById(`approval-${budget.approvalId}`);
                    if (!card) return;
                    event.preventDefault();
                    event.stopPropagation();
                    card.scrollIntoView({ block: "center" });
                    card.querySelector("input, textarea")?.focus();
                  },
                },
                "pending budget approval",
              ),
            ]
          : null,
      ),
    );
  }
  return h("div", { class: "run-usage" }, parts);
}
