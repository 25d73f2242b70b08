// Podium console: a run's or a definition's steps drawn as a DAG in SVG.
// No library: steps are placed in columns by their longest path from a root
// (depends_on), in definition order within a column; edges are cubic curves.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const NODE_W = 180;
const NODE_H = 58;
const GAP_X = 60;
const GAP_Y = 18;
const PAD = 12;

function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

// steps: [{id, dependsOn: [...], state, label, detail, href}]
// Returns an <svg> element; each node is a <g class="node state-X" data-step="id">.
function drawGraph(steps) {
  const byId = new Map(steps.map((step) => [step.id, step]));
  const depth = new Map();
  const visiting = new Set();
  function depthOf(id) {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0; // a cycle cannot be stored; stay safe anyway
    visiting.add(id);
    const parents = (byId.get(id)?.dependsOn || []).filter((p) => byId.has(p));
    const value = parents.length ? 1 + Math.max(...parents.map(depthOf)) : 0;
    visiting.delete(id);
    depth.set(id, value);
    return value;
  }
  const columns = [];
  for (const step of steps) {
    const column = depthOf(step.id);
    (columns[column] = columns[column] || []).push(step);
  }
  const position = new Map();
  columns.forEach((column, x) =>
    (column || []).forEach((step, y) =>
      position.set(step.id, {
        x: PAD + x * (NODE_W + GAP_X),
        y: PAD + y * (NODE_H + GAP_Y),
      }),
    ),
  );
  const rows = Math.max(1, ...columns.map((column) => (column || []).length));
  const width = PAD * 2 + Math.max(1, columns.length) * (NODE_W + GAP_X) - GAP_X;
  const height = PAD * 2 + rows * (NODE_H + GAP_Y) - GAP_Y;
  const root = svg("svg", {
    class: "dag",
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-label": "step graph",
  });
  const defs = svg("defs");
  const marker = svg("marker", {
    id: "arrow",
    viewBox: "0 0 10 10",
    refX: 10,
    refY: 5,
    markerWidth: 7,
    markerHeight: 7,
    orient: "auto-start-reverse",
  });
  marker.append(svg("path", { d: "M 0 0 L 10 5 L 0 10 z", class: "arrowhead" }));
  defs.append(marker);
  root.append(defs);
  for (const step of steps) {
    const to = position.get(step.id);
    for (const parent of step.dependsOn || []) {
      const from = position.get(parent);
      if (!from) continue;
      const x1 = from.x + NODE_W;
      const y1 = from.y + NODE_H / 2;
      const x2 = to.x;
      const y2 = to.y + NODE_H / 2;
      const mid = (x1 + x2) / 2;
      root.append(
        svg("path", {
          class: "edge",
          d: `M ${x1} ${y1} C ${mid} ${y1}, ${mid} ${y2}, ${x2} ${y2}`,
          "marker-end": "url(#arrow)",
        }),
      );
    }
  }
  for (const step of steps) {
    const at = position.get(step.id);
    const group = svg("g", {
      class: `node state-${(step.state || "none").toLowerCase()}`,
      "data-step": step.id,
      "data-state": step.state || "",
      transform: `translate(${at.x},${at.y})`,
    });
    const title = svg("title", {}, `${step.id}: ${step.state || "defined"}`);
    group.append(title, svg("rect", { width: NODE_W, height: NODE_H, rx: 6, ry: 6 }));
    group.append(svg("text", { x: 10, y: 20, class: "node-id" }, clip(step.id, 22)));
    group.append(svg("text", { x: 10, y: 37, class: "node-label" }, clip(step.label || "", 26)));
    group.append(svg("text", { x: 10, y: 52, class: "node-detail" }, clip(step.detail || "", 28)));
    if (step.href) {
      const link = svg("a", { href: step.href });
      link.append(group);
      root.append(link);
    } else {
      root.append(group);
    }
  }
  return root;
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

window.PodiumGraph = { drawGraph };
