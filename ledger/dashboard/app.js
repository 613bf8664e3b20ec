// Corolla ledger dashboard: reads the public JSON API and renders tables and one SVG plot.
"use strict";

const RESULT = { 0: "none", 1: "pass", 2: "fail", 3: "unreachable" };
const REASON = { 0: "none", 1: "output_mismatch", 2: "opening_hash_mismatch", 3: "merkle_mismatch",
  4: "chain_mismatch", 5: "replay", 6: "unreachable", 7: "receipt_mismatch", 8: "malformed" };

async function api(path, params) {
  const url = new URL(path, location.origin);
  for (const [k, v] of Object.entries(params || {})) if (v !== "" && v != null) url.searchParams.set(k, v);
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${path}: ${r.status}`);
  return r.json();
}

const short = (hex) => (hex ? hex.slice(0, 12) + "…" : "");

function cell(tr, value, opts = {}) {
  const td = document.createElement("td");
  td.textContent = value == null ? "" : String(value);
  if (opts.field) td.dataset.field = opts.field;
  if (opts.key) { td.classList.add("key"); td.title = opts.key; }
  if (opts.cls) td.classList.add(opts.cls);
  tr.appendChild(td);
  return td;
}

function fill(tableId, rows, render) {
  const body = document.querySelector(`#${tableId} tbody`);
  body.replaceChildren();
  for (const row of rows) {
    const tr = document.createElement("tr");
    render(tr, row);
    body.appendChild(tr);
  }
}

function card(label, value, id) {
  const div = document.createElement("div");
  div.className = "card";
  div.innerHTML = `<span></span><b id="${id}"></b>`;
  div.querySelector("span").textContent = label;
  div.querySelector("b").textContent = String(value);
  return div;
}

function plot(points) {
  const svg = document.getElementById("plot");
  const W = svg.width.baseVal.value, H = svg.height.baseVal.value, pad = 30;
  svg.replaceChildren();
  const ns = "http://www.w3.org/2000/svg";
  const el = (name, attrs) => {
    const e = document.createElementNS(ns, name);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
    svg.appendChild(e);
    return e;
  };
  el("line", { x1: pad, y1: H - pad, x2: W - 5, y2: H - pad, stroke: "#999" });
  if (!points.length) {
    el("text", { x: W / 2, y: H / 2, "text-anchor": "middle", fill: "#888" }).textContent = "no receipts yet";
    return;
  }
  const maxWork = Math.max(1, ...points.map((p) => p.verified_work));
  const maxFail = Math.max(1, ...points.map((p) => p.failures));
  const step = (W - pad - 10) / points.length;
  points.forEach((p, i) => {
    const h = (p.verified_work / maxWork) * (H - 2 * pad);
    const bar = el("rect", { x: pad + i * step + 1, y: H - pad - h, width: Math.max(1, step - 2), height: h,
      fill: "#3b7dd8", class: "work-bar" });
    bar.dataset.work = p.verified_work;
    const t = document.createElementNS(ns, "title");
    t.textContent = `${new Date(p.start_ms).toISOString()}: ${p.verified_work} credits verified, ${p.failures} failures`;
    bar.appendChild(t);
    if (p.failures) {
      const fh = (p.failures / maxFail) * (H - 2 * pad);
      const c = el("circle", { cx: pad + i * step + step / 2, cy: H - pad - fh, r: 4, fill: "#d0453a",
        class: "fail-dot" });
      c.dataset.failures = p.failures;
    }
  });
  el("text", { x: pad, y: 14, fill: "#555" }).textContent = `max ${maxWork} credits / bucket`;
}

async function loadReceipts() {
  const f = new FormData(document.getElementById("receipt-filters"));
  const rows = await api("/v1/receipts", { node: f.get("node"), status: f.get("status"),
    verdict: f.get("verdict"), limit: 200 });
  fill("receipts", rows, (tr, r) => {
    tr.dataset.id = r.id;
    cell(tr, short(r.id), { key: r.id }); cell(tr, short(r.node_key), { key: r.node_key });
    cell(tr, short(r.client_key), { key: r.client_key }); cell(tr, `${r.block_start}–${r.block_end}`);
    cell(tr, r.tokens, { field: "tokens" }); cell(tr, r.value, { field: "value" });
    cell(tr, r.ticket_id ? short(r.ticket_id) : "free"); cell(tr, RESULT[r.verdict_result], { field: "verdict",
      cls: r.verdict_result === 2 ? "fail" : "" });
    cell(tr, r.status, { field: "status" }); cell(tr, r.epoch, { field: "epoch" });
  });
}

async function loadVerdicts() {
  const f = new FormData(document.getElementById("verdict-filters"));
  const rows = await api("/v1/verdicts", { verifier: f.get("verifier"), result: f.get("result"), limit: 200 });
  fill("verdicts", rows, (tr, v) => {
    tr.dataset.id = v.id;
    cell(tr, short(v.id), { key: v.id }); cell(tr, short(v.receipt_id), { key: v.receipt_id });
    cell(tr, short(v.verifier_key), { key: v.verifier_key }); cell(tr, v.block);
    cell(tr, RESULT[v.result], { field: "result", cls: v.result === 2 ? "fail" : "" });
    cell(tr, REASON[v.reason] || v.reason, { field: "reason" }); cell(tr, v.measured.toPrecision(3));
    cell(tr, v.tolerance.toPrecision(3)); cell(tr, v.slash_epoch, { field: "slash_epoch" });
  });
}

function showNodeHistory(key) {
  const form = document.getElementById("receipt-filters");
  form.elements.node.value = key;
  form.elements.status.value = "";
  form.elements.verdict.value = "";
  loadReceipts().then(() => document.getElementById("receipts").scrollIntoView());
}

async function loadAll() {
  const [key, check, nodes, verifiers, epochs, accounts, timeline] = await Promise.all([
    api("/v1/ledger-key"), api("/v1/check"), api("/v1/nodes"), api("/v1/verifiers"), api("/v1/epochs"),
    api("/v1/accounts", { limit: 1000 }), api("/v1/timeline", { bucket_s: 60 }),
  ]);
  document.getElementById("ledger-key").textContent = `ledger key ${short(key.ledger_key)}`;
  const books = document.getElementById("books");
  books.textContent = check.ok ? "books consistent" : `${check.problems.length} invariant(s) violated`;
  books.className = "badge " + (check.ok ? "ok" : "bad");
  const totals = document.getElementById("totals");
  totals.replaceChildren(
    card("minted", check.minted, "total-minted"), card("held by accounts", check.held, "total-held"),
    card("in escrow", check.escrow, "total-escrow"), card("slashed", check.slashed, "total-slashed"),
    card("nodes", nodes.length, "total-nodes"), card("epochs", epochs.length, "total-epochs"));
  fill("nodes", nodes, (tr, n) => {
    tr.dataset.key = n.key;
    const k = cell(tr, short(n.key), { key: n.key });
    k.classList.add("link");
    k.addEventListener("click", () => showNodeHistory(n.key));  // the node's pass/fail history
    cell(tr, n.receipts, { field: "receipts" });
    cell(tr, n.tokens, { field: "tokens" }); cell(tr, n.claimed, { field: "claimed" });
    cell(tr, n.paid, { field: "paid" }); cell(tr, n.passes, { field: "passes" });
    cell(tr, n.fails, { field: "fails", cls: n.fails ? "fail" : "" }); cell(tr, n.unreachable, { field: "unreachable" });
    cell(tr, n.balance, { field: "balance" }); cell(tr, n.stake, { field: "stake" }); cell(tr, n.evm_address || "");
  });
  fill("verifiers", verifiers, (tr, v) => {
    tr.dataset.key = v.key;
    cell(tr, short(v.key), { key: v.key }); cell(tr, v.checks, { field: "checks" });
    cell(tr, v.passes, { field: "passes" }); cell(tr, v.fails, { field: "fails" });
    cell(tr, v.unreachable, { field: "unreachable" });
    cell(tr, Object.entries(v.by_reason).map(([r, n]) => `${r}: ${n}`).join(", "), { field: "by_reason" });
  });
  fill("epochs", epochs, (tr, e) => {
    tr.dataset.number = e.number;
    cell(tr, e.number); cell(tr, new Date(e.closed_ms).toISOString().replace("T", " ").slice(0, 19));
    cell(tr, e.receipts_paid, { field: "receipts_paid" }); cell(tr, e.receipts_failed, { field: "receipts_failed" });
    cell(tr, e.work_minted, { field: "work_minted" }); cell(tr, e.ticket_spent, { field: "ticket_spent" });
    cell(tr, e.refunded, { field: "refunded" }); cell(tr, e.slashed, { field: "slashed" });
    cell(tr, e.root ? short(e.root) : "—", { key: e.root || "", field: "root" });
    cell(tr, e.anchor_tx ? short(e.anchor_tx) : "—", { key: e.anchor_tx || "" });
  });
  fill("accounts", accounts, (tr, a) => {
    tr.dataset.key = a.key;
    cell(tr, a.key.length === 64 ? short(a.key) : a.key, { key: a.key }); cell(tr, a.role);
    cell(tr, a.balance, { field: "balance" }); cell(tr, a.escrow, { field: "escrow" });
    cell(tr, a.earned, { field: "earned" }); cell(tr, a.slashed, { field: "slashed" });
    cell(tr, a.cumulative, { field: "cumulative" }); cell(tr, a.evm_address || "");
  });
  plot(timeline);
  await Promise.all([loadReceipts(), loadVerdicts()]);
  document.body.dataset.loaded = String(Date.now());
}

document.getElementById("receipt-filters").addEventListener("submit", (e) => { e.preventDefault(); loadReceipts(); });
document.getElementById("verdict-filters").addEventListener("submit", (e) => { e.preventDefault(); loadVerdicts(); });
document.getElementById("refresh").addEventListener("click", () => loadAll());
loadAll().catch((err) => { document.getElementById("books").textContent = `error: ${err.message}`; });
