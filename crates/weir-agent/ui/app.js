// The service map: polls /api/graph every 2 s, draws it with cytoscape,
// and writes the same nodes and edges into the tables below the graph
// (a canvas's contents are invisible to the DOM, screen readers and tests).
"use strict";

const POLL_MS = 2000;
const COLOURS = { forwarded: "#2e7d32", dropped: "#c62828", mixed: "#ef6c00", other: "#757575" };
const namespaceSelect = document.getElementById("namespace");
const statusLine = document.getElementById("status");
const panel = document.getElementById("panel");
let selected = null; // the edge whose flows the panel shows
let shownNodes = ""; // the node ids laid out, to lay out again only on change

const cy = cytoscape({
  container: document.getElementById("graph"),
  style: [
    { selector: "node", style: {
      "label": "data(label)", "font-size": 11, "text-valign": "bottom", "text-margin-y": 4,
      "background-color": "#546e7a", "width": 26, "height": 26 } },
    { selector: "node[kind = 'reserved'], node[kind = 'address']", style: { "background-color": "#8d6e63", "shape": "diamond" } },
    // A Service: a rounded box its clients' edges go into and its backends'
    // edges come out of.
    { selector: "node[kind = 'service']", style: {
      "background-color": "#1565c0", "shape": "round-rectangle", "width": 44, "height": 22,
      "border-width": 2, "border-color": "#0d47a1" } },
    { selector: "edge", style: {
      "label": "data(label)", "font-size": 10, "text-background-color": "#fff", "text-background-opacity": 0.85,
      "text-background-padding": 2, "curve-style": "bezier", "control-point-step-size": 90,
      "target-arrow-shape": "triangle",
      "width": 2, "line-color": "data(colour)", "target-arrow-color": "data(colour)" } },
    { selector: "edge:selected", style: { "width": 4 } },
  ],
  wheelSensitivity: 0.3,
});

function param(name) {
  return new URLSearchParams(window.location.search).get(name) || "";
}
// The namespace shown: the address's, kept here (a select cannot hold a
// value it has no option for yet).
let namespace = param("namespace");

function rate(x) {
  return x >= 10 ? x.toFixed(0) : x >= 0.1 ? x.toFixed(2) : x > 0 ? x.toFixed(3) : "0";
}

function httpText(http) {
  return Object.entries(http).map(([cls, n]) => `${cls}:${n}`).join(" ");
}

function edgeLabel(e) {
  const parts = [`${e.port}/${e.protocol}`, `${rate(e.flows_per_s)} flows/s`];
  if (e.counts.requests > 0) parts.push(`${rate(e.requests_per_s)} req/s`);
  const http = httpText(e.counts.http);
  if (http) parts.push(http);
  if (e.counts.dns_errors > 0) parts.push(`DNS errors:${e.counts.dns_errors}`);
  if (e.counts.dropped > 0) parts.push(`dropped:${e.counts.dropped}`);
  return parts.join(" · ");
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text;
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function time(ms) {
  return new Date(ms).toISOString().replace("T", " ").replace("Z", "");
}

function drawTables(view) {
  const kinds = new Map(view.nodes.map((n) => [n.id, n.kind]));
  const edges = document.querySelector("#edges tbody");
  edges.replaceChildren();
  for (const e of view.edges) {
    const tr = document.createElement("tr");
    Object.assign(tr.dataset, {
      edgeId: e.id, from: e.from, to: e.to, fromKind: kinds.get(e.from) || "", toKind: kinds.get(e.to) || "", port: e.port, protocol: e.protocol, verdict: e.verdict,
      flows: e.counts.flows, dropped: e.counts.dropped, requests: e.counts.requests, dnsErrors: e.counts.dns_errors,
    });
    for (const [cls, n] of Object.entries(e.counts.http)) tr.dataset["http" + cls] = n;
    if (selected && selected.id === e.id) tr.className = "selected";
    cell(tr, e.from); cell(tr, e.to); cell(tr, `${e.port}/${e.protocol}`);
    cell(tr, e.verdict, "verdict"); cell(tr, e.counts.flows); cell(tr, rate(e.flows_per_s));
    cell(tr, rate(e.requests_per_s)); cell(tr, httpText(e.counts.http)); cell(tr, e.counts.dns_errors);
    cell(tr, Object.entries(e.counts.drop_reasons).map(([r, n]) => `${r}:${n}`).join(" "));
    cell(tr, time(e.last_seen_ms));
    const button = document.createElement("button");
    button.type = "button";
    button.textContent = "flows";
    button.addEventListener("click", () => select(e));
    cell(tr, "").appendChild(button);
    edges.appendChild(tr);
  }
  const nodes = document.querySelector("#nodes tbody");
  nodes.replaceChildren();
  for (const n of view.nodes) {
    const tr = document.createElement("tr");
    Object.assign(tr.dataset, { nodeId: n.id, kind: n.kind, namespace: n.namespace, name: n.name });
    cell(tr, n.id); cell(tr, n.kind); cell(tr, n.namespace); cell(tr, n.app);
    nodes.appendChild(tr);
  }
}

function drawGraph(view) {
  const elements = [];
  for (const n of view.nodes) {
    const label = n.kind === "pod" ? n.id : n.kind === "service" ? `Service ${n.namespace}/${n.name}` : n.name;
    elements.push({ group: "nodes", data: { id: n.id, label, kind: n.kind } });
  }
  for (const e of view.edges) {
    elements.push({ group: "edges", data: {
      id: e.id, source: e.from, target: e.to, label: edgeLabel(e), colour: COLOURS[e.verdict] || COLOURS.other,
      edge: e } });
  }
  const ids = view.nodes.map((n) => n.id).join("\n");
  cy.batch(() => {
    const wanted = new Set(elements.map((el) => el.data.id));
    cy.elements().filter((el) => !wanted.has(el.id())).remove();
    for (const el of elements) {
      const existing = cy.getElementById(el.data.id);
      if (existing.nonempty()) existing.data(el.data); else cy.add(el);
    }
  });
  if (ids !== shownNodes) {
    shownNodes = ids;
    // Clients above the servers they call; the same picture on every load.
    cy.layout({ name: "breadthfirst", directed: true, padding: 40, spacingFactor: 1.6, animate: false }).run();
  }
}

function drawNamespaces(view) {
  const offered = namespace && !view.namespaces.includes(namespace) ? [...view.namespaces, namespace] : view.namespaces;
  const have = [...namespaceSelect.options].map((o) => o.value).slice(1).join("\n");
  if (have !== offered.join("\n")) {
    namespaceSelect.replaceChildren(new Option("all namespaces", ""));
    for (const ns of offered) namespaceSelect.add(new Option(ns, ns));
  }
  namespaceSelect.value = namespace;
}

function drawStatus(view) {
  const connected = view.relay_nodes.filter((n) => n.state === "NODE_CONNECTED").length;
  const t = view.tally;
  const refused = t.over_edge_cap + t.over_node_cap;
  statusLine.textContent =
    `${connected}/${view.relay_nodes.length} nodes connected · ${view.nodes.length} nodes, ${view.edges.length} edges ` +
    `over the last ${view.window_s} s · ${t.counted} flows counted` +
    (refused ? ` · ${refused} refused past the caps` : "") + (t.lost_events ? ` · ${t.lost_events} events lost` : "");
  statusLine.dataset.connected = connected;
}

async function select(edge) {
  selected = edge;
  // The address names the edge, so a link opens its flows.
  const url = new URL(window.location.href);
  for (const key of ["from", "to", "port", "protocol"]) url.searchParams.set(key, edge[key]);
  window.history.replaceState(null, "", url);
  const q = new URLSearchParams({ from: edge.from, to: edge.to, port: edge.port, protocol: edge.protocol });
  const answer = await fetch(`api/flows?${q}`);
  const body = await answer.json();
  document.getElementById("panel-title").textContent = `Flows of ${edge.id}`;
  const rows = document.querySelector("#flows tbody");
  rows.replaceChildren();
  for (const f of body.flows || []) {
    const tr = document.createElement("tr");
    tr.dataset.verdict = f.verdict;
    cell(tr, time(f.time_ms).slice(11), "time"); cell(tr, f.node, "node");
    tr.dataset.service = f.service;
    cell(tr, f.service ? `${f.source} → ${f.destination} (${f.service})` : `${f.source} → ${f.destination}`);
    cell(tr, f.drop_reason ? `${f.verdict} (${f.drop_reason})` : f.verdict, "verdict");
    cell(tr, f.rule ? `${f.summary} [${f.rule}]` : f.summary);
    rows.appendChild(tr);
  }
  panel.dataset.edgeId = edge.id;
  if (panel.hidden) {
    panel.hidden = false;
    refit();
  }
}

// The graph's box changes with the panel: fit the graph to it again.
function refit() {
  cy.resize();
  cy.fit(undefined, 40);
}

document.getElementById("panel-close").addEventListener("click", () => {
  panel.hidden = true;
  refit();
  selected = null;
  const url = new URL(window.location.href);
  for (const key of ["from", "to", "port", "protocol"]) url.searchParams.delete(key);
  window.history.replaceState(null, "", url);
});
cy.on("tap", "edge", (event) => select(event.target.data("edge")));
namespaceSelect.addEventListener("change", () => {
  namespace = namespaceSelect.value;
  const url = new URL(window.location.href);
  if (namespace) url.searchParams.set("namespace", namespace);
  else url.searchParams.delete("namespace");
  window.history.replaceState(null, "", url);
  shownNodes = "";
  poll();
});

async function poll() {
  try {
    const answer = await fetch(namespace ? `api/graph?namespace=${encodeURIComponent(namespace)}` : "api/graph");
    const view = await answer.json();
    if (!answer.ok) throw new Error(view.error || answer.statusText);
    drawNamespaces(view);
    drawTables(view);
    drawGraph(view);
    drawStatus(view);
    // The edge the address names (a link to its flows), or the one shown,
    // read again with the graph.
    const linked = view.edges.find((e) => selected ? e.id === selected.id :
      e.from === param("from") && e.to === param("to") && String(e.port) === param("port") &&
      e.protocol === param("protocol"));
    if (linked) await select(linked);
    document.body.dataset.loaded = "true";
    delete document.body.dataset.error;
  } catch (error) {
    document.body.dataset.error = String(error);
    statusLine.textContent = `cannot read the graph: ${error}`;
  }
}

(function loop() {
  poll().finally(() => setTimeout(loop, POLL_MS));
})();
