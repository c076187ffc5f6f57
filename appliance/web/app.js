// vnet dashboard: draws the snapshots of /api/v1/stream (see dashboard.go).
"use strict";
const $ = (s) => document.querySelector(s);
const SVGNS = "http://www.w3.org/2000/svg";
let updates = 0;
const seen = []; // archetypes in the order they were inferred

function el(tag, attrs, text) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text != null) e.textContent = text;
  return e;
}

function html(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text != null) e.textContent = text;
  return e;
}

function fmtBytes(b) {
  if (b >= 1e9) return (b / 1e9).toFixed(1) + " GB";
  if (b >= 1e6) return (b / 1e6).toFixed(1) + " MB";
  if (b >= 1e3) return (b / 1e3).toFixed(0) + " kB";
  return b + " B";
}

function fmtRate(mbps) { return mbps ? (mbps >= 100 ? mbps.toFixed(0) : mbps.toFixed(1)) + " Mb/s" : "–"; }
function fmtRTT(us) { return us ? (us >= 10000 ? (us / 1000).toFixed(0) : (us / 1000).toFixed(2)) + " ms" : "–"; }

// VM order: by host, then MAC; labels: the first IP, else the MAC's tail.
function vmIndex(s) {
  const by = {};
  for (const v of s.vms) by[v.mac] = v;
  return by;
}
function vmLabel(by, mac) {
  const v = by[mac];
  return v && v.ips && v.ips.length ? v.ips[0] : mac.slice(-5);
}
function sortVMs(by, macs) {
  return [...new Set(macs)].sort((a, b) => {
    const ha = (by[a] || {}).host || "~", hb = (by[b] || {}).host || "~";
    return ha < hb ? -1 : ha > hb ? 1 : a < b ? -1 : a > b ? 1 : 0;
  });
}

function linkClass(l) {
  if (l.state !== "up") return "down";
  if (l.role === "star") return "star";
  if (l.via === "relayed") return "relayed";
  if (l.via === "punched") return "punched";
  return "fast";
}

function drawNet(s, by) {
  const svg = $("#net");
  svg.replaceChildren();
  const names = s.hosts.map((h) => h.name);
  for (const l of s.links) for (const n of [l.a, l.b]) if (n && n !== "proxy" && !names.includes(n)) names.push(n);
  names.sort();
  const pos = { proxy: [0, 0] };
  const R = names.length > 1 ? 165 : 120;
  names.forEach((h, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / names.length;
    pos[h] = [R * Math.cos(a), R * Math.sin(a)];
  });
  const links = el("g"), nodes = el("g");
  svg.append(links, nodes);
  for (const l of s.links) {
    const a = pos[l.a], b = pos[l.b];
    if (!a || !b) continue;
    const cls = linkClass(l);
    links.append(el("line", { class: "link " + cls, x1: a[0], y1: a[1], x2: b[0], y2: b[1],
      "data-link": l.name, "data-class": cls }));
    const t = el("text", { x: (a[0] + b[0]) / 2, y: (a[1] + b[1]) / 2 - 8, class: "dim" }, fmtRTT(l.rtt_us));
    links.append(t);
  }
  nodes.append(el("circle", { class: "proxy", cx: 0, cy: 0, r: 26 }), el("text", { x: 0, y: 0 }, "proxy"));
  const vmsOf = {};
  for (const v of s.vms) (vmsOf[v.host] = vmsOf[v.host] || []).push(v);
  for (const h of names) {
    const [x, y] = pos[h];
    const g = el("g", { class: "hostnode", "data-host": h });
    const hvms = vmsOf[h] || [];
    // VMs on an arc outside the host, away from the proxy
    const out = Math.atan2(y, x) || -Math.PI / 2;
    hvms.forEach((v, i) => {
      const a = out + (i - (hvms.length - 1) / 2) * 0.75;
      const vx = x + 56 * Math.cos(a), vy = y + 56 * Math.sin(a);
      g.append(el("line", { x1: x, y1: y, x2: vx, y2: vy, class: "link star", "stroke-width": 1 }));
      g.append(el("circle", { class: "vm", cx: vx, cy: vy, r: 13, "data-vm": v.mac }));
      g.append(el("text", { x: vx, y: vy }, vmLabel(by, v.mac).split(".").pop()));
    });
    g.append(el("rect", { class: "host", x: x - 26, y: y - 14, width: 52, height: 28, rx: 6 }));
    g.append(el("text", { x: x, y: y }, h));
    nodes.append(g);
  }
}

function drawTopo(s, by) {
  const svg = $("#topo");
  svg.replaceChildren();
  const t = s.topology;
  const edges = (t && t.edges) || [];
  let macs = (t && t.nodes) || [];
  if (!macs.length) for (const e of s.matrix.entries || []) macs.push(e.src, e.dst);
  macs = sortVMs(by, macs);
  const pos = {};
  macs.forEach((m, i) => {
    const a = -Math.PI / 2 + (2 * Math.PI * i) / macs.length;
    pos[m] = [190 * Math.cos(a), 190 * Math.sin(a)];
  });
  // one line per VM pair, width by the pair's traffic
  const pair = {};
  for (const e of edges) {
    const k = e.src < e.dst ? e.src + " " + e.dst : e.dst + " " + e.src;
    pair[k] = (pair[k] || 0) + e.bytes;
  }
  const max = Math.max(1, ...Object.values(pair));
  const g = el("g");
  svg.append(g);
  for (const k in pair) {
    const [a, b] = k.split(" ").map((m) => pos[m]);
    if (!a || !b) continue;
    g.append(el("line", { class: "edge", x1: a[0], y1: a[1], x2: b[0], y2: b[1],
      "stroke-width": (1 + 9 * pair[k] / max).toFixed(1), "data-pair": k }));
  }
  for (const m of macs) {
    const [x, y] = pos[m];
    const hub = t && t.hub === m;
    svg.append(el("circle", { class: "vm", cx: x, cy: y, r: hub ? 18 : 14, "data-vm": m }));
    svg.append(el("text", { x: x, y: y }, vmLabel(by, m).split(".").pop()));
    svg.append(el("text", { x: x, y: y + 24, class: "dim" }, ((by[m] || {}).host || "") + (hub ? " hub" : "")));
  }
  const arch = t && t.archetype ? t.archetype + " (" + Math.round(100 * t.confidence) + "%)" : edges.length ? "unnamed" : "no traffic";
  $("#archetype").textContent = arch;
  if (t && t.archetype && seen[seen.length - 1] !== t.archetype) seen.push(t.archetype);
  $("#history").textContent = seen.join(" → ") || "–";
  document.body.dataset.archetypes = seen.join(",");
}

function drawMatrix(s, by) {
  const m = s.matrix || {};
  const entries = m.entries || [];
  $("#window").textContent = m.window_s ? "bytes over the last " + m.window_s + " s, row sends to column" : "";
  const macs = sortVMs(by, entries.flatMap((e) => [e.src, e.dst]));
  const cell = {};
  let max = 1;
  for (const e of entries) {
    cell[e.src + " " + e.dst] = e.bytes;
    max = Math.max(max, e.bytes);
  }
  const table = html("table");
  const head = html("tr");
  head.append(html("th"));
  for (const d of macs) head.append(html("th", {}, vmLabel(by, d).split(".").pop()));
  table.append(head);
  for (const a of macs) {
    const tr = html("tr");
    tr.append(html("th", {}, vmLabel(by, a)));
    for (const b of macs) {
      const v = cell[a + " " + b] || 0;
      const td = html("td", { title: vmLabel(by, a) + " → " + vmLabel(by, b) + ": " + fmtBytes(v) },
        v ? (v / 1e6).toFixed(1) : "");
      td.style.background = "rgba(74,163,255," + (v / max).toFixed(3) + ")";
      tr.append(td);
    }
    table.append(tr);
  }
  $("#matrix").replaceChildren(macs.length ? table : html("p", { class: "dim" }, "no VM traffic yet"));
}

function drawLinks(s) {
  const tb = $("#links tbody");
  tb.replaceChildren();
  for (const l of s.links) {
    const tr = html("tr");
    for (const [v, cls] of [[l.name], [l.kind], [l.role], [l.via || ""], [l.state, l.state],
      [fmtRTT(l.rtt_us)], [fmtRate(l.tx_mbps)], [fmtRate(l.rx_mbps)]]) {
      tr.append(html("td", cls ? { class: cls } : {}, v));
    }
    tb.append(tr);
  }
}

function drawEvents(s) {
  const ol = $("#events");
  ol.replaceChildren();
  // Rules follow links by the dozen: count them instead of listing each.
  let rules = 0;
  for (const e of [...(s.events || [])].reverse()) {
    if (e.kind === "adapt" && /^(add|del)-rule /.test(e.note || "")) {
      rules++;
      continue;
    }
    const li = html("li");
    li.append(html("span", { class: "t" }, new Date(e.at).toLocaleTimeString()));
    li.append(html("span", { class: "kind " + e.kind }, e.kind));
    let note = e.note || "";
    if (e.topology && !note) note = e.topology.archetype + " (" + (e.topology.edges || []).length + " edges)";
    li.append(document.createTextNode(note));
    ol.append(li);
  }
  if (rules) ol.append(html("li", { class: "dim" }, "… and " + rules + " forwarding-rule changes"));
}

function render(s) {
  const by = vmIndex(s);
  $("#who").textContent = s.role + " " + s.name;
  const up = s.hosts.filter((h) => h.state === "up").length;
  const fast = s.links.filter((l) => l.role === "fast" && l.state === "up").length;
  $("#summary").textContent = up + "/" + s.hosts.length + " hosts up · " + s.vms.length + " VMs · " + fast +
    " fast paths · updated " + new Date(s.at).toLocaleTimeString();
  drawNet(s, by);
  drawTopo(s, by);
  drawMatrix(s, by);
  drawLinks(s);
  drawEvents(s);
  updates++;
  document.body.dataset.updates = updates;
}

// A daemon with --api-token-file wants its token: open the page as /?token=...
const token = new URLSearchParams(location.search).get("token");
const es = new EventSource("api/v1/stream" + (token ? "?token=" + encodeURIComponent(token) : ""));
es.addEventListener("snapshot", (e) => {
  $("#live").className = "ok";
  render(JSON.parse(e.data));
});
es.onerror = () => { $("#live").className = "stale"; };
