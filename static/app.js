// coordscope web view: renders what the collectors stream over /ws.
// Every value from the stores is untrusted text: it only ever reaches the page
// through textContent or SVG text nodes, never as HTML.
"use strict";

// The families of entities (locks, sessions, marks...) come from GET /api/families: a
// panel each, with its columns. Each entity's row arrives ready-made with it (its
// family's cells), so this page draws every family the same way and knows none.
let FAMILIES = [];                 // [{kind, plural, title, panel, empty, columns}]
let KINDS = ["run", "node"];       // every kind we keep (families' kinds, once loaded)
const MAX_LOG = 300;
const MAX_ROWS = 300;

const S = {
  entities: {run: new Map(), node: new Map()},
  rows: {},              // kind -> Map(id -> cells)
  totals: {},            // kind -> how many the server holds (we may hold one page of them)
  show: {},              // kind -> how many rows its table shows (grows with "show more")
  dirty: new Set(),
  log: [],
  clockOffset: 0,        // server ms - browser ms, from the last snapshot
  scenarios: [],
  selectedRun: null,     // run id shown in the run view
  selected: null,        // {kind, id} of the entity shown in full under its table
  detail: null,          // its detail lines, as last fetched
  journey: null,         // the message followed across the run's lanes

  followNewest: true,
  paused: false,
  filter: "",
};

const $ = (sel) => document.querySelector(sel);
const serverNow = () => Date.now() + S.clockOffset;

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

const SVG_NS = "http://www.w3.org/2000/svg";
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms < 0) return "expired";
  if (ms < 10000) return (ms / 1000).toFixed(1) + "s";
  if (ms < 3600000) return Math.round(ms / 1000) + "s";
  return (ms / 3600000).toFixed(1) + "h";
}

function fmtTime(ms) {
  if (!ms) return "–";
  const d = new Date(ms);
  return d.toLocaleTimeString([], {hour12: false}) + "." + String(d.getMilliseconds()).padStart(3, "0");
}

function short(text, n = 40) {
  text = String(text ?? "");
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

// ------------------------------------------------------------------ websocket

let socket = null;
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  socket = new WebSocket(`${proto}://${location.host}/ws?batch=1`);
  socket.onopen = () => setConn(true);
  socket.onclose = () => { setConn(false); setTimeout(connect, 1000); };
  socket.onmessage = (msg) => {
    let event;
    try { event = JSON.parse(msg.data); } catch { return; }
    apply(event);
  };
}

function setConn(up) {
  const c = $("#conn");
  c.textContent = up ? "live" : "disconnected: retrying";
  c.className = "conn " + (up ? "conn-up" : "conn-down");
}

function setTotals(totals) {
  for (const f of FAMILIES) {
    const n = (totals || {})[f.plural];
    if (typeof n === "number" && n !== S.totals[f.kind]) { S.totals[f.kind] = n; S.dirty.add(f.kind); }
  }
}

// A family the server holds more of than we do: we keep our page of it (and what "show
// more" fetched) and take no new ids from events, or a busy family would grow without end.
const partial = (kind) => (S.totals[kind] ?? 0) > (S.entities[kind]?.size ?? 0);

function apply(event) {
  const type = event.type || "";
  if (type === "batch") {
    for (const e of event.events || []) apply(e);
    setTotals(event.totals);
    return;
  }
  if (type === "snapshot") {
    S.clockOffset = event.at_ms - Date.now();
    for (const f of FAMILIES) {
      S.entities[f.kind] = new Map((event[f.plural] || []).map(e => [e.id, e]));
      S.rows[f.kind] = new Map(Object.entries((event.rows || {})[f.kind] || {}));
      S.dirty.add(f.kind);
    }
    setTotals(event.totals);
    S.log = (event.log || []).slice(-MAX_LOG);
    S.dirty.add("log");
  } else if (type === "log") {
    S.log.push(event);
    if (S.log.length > MAX_LOG) S.log.splice(0, S.log.length - MAX_LOG);
    S.dirty.add("log");
  } else if (type.endsWith(".upserted")) {
    const kind = type.slice(0, -9);
    // past the first page a kind only updates what it lists — except runs: the run pane
    // follows a new run however many older ones the store keeps (they are trimmed instead)
    if (S.entities[kind] && event[kind] && (S.entities[kind].has(event[kind].id) || !partial(kind) || kind === "run")) {
      S.entities[kind].set(event[kind].id, event[kind]);
      if (event.row && S.rows[kind]) S.rows[kind].set(event[kind].id, event.row);
      if (kind === "run") trimRuns();
      if (S.selected && S.selected.kind === kind && S.selected.id === event[kind].id) loadDetail();
      S.dirty.add(kind);
      if (kind === "run" && S.followNewest && event[kind].status === "running") {
        S.selectedRun = event[kind].id;
      }
    }
  } else if (type.endsWith(".removed")) {
    const kind = type.slice(0, -8);
    if (S.entities[kind]) {
      S.entities[kind].delete(event.id);
      if (S.rows[kind]) S.rows[kind].delete(event.id);
      if (S.selected && S.selected.kind === kind && S.selected.id === event.id) loadDetail();
      S.dirty.add(kind);
    }
  }
  schedule();
}

const RUNS_KEPT = 300;
function trimRuns() {
  // the oldest runs go first (never the one shown): the page keeps a bounded list
  const runs = S.entities.run;
  if (runs.size <= RUNS_KEPT) return;
  const old = [...runs.values()].filter(r => r.id !== S.selectedRun)
    .sort((a, b) => (a.started_ms || 0) - (b.started_ms || 0));
  for (const r of old.slice(0, runs.size - RUNS_KEPT)) { runs.delete(r.id); S.rows.run?.delete(r.id); }
}

let frame = 0;
function schedule() {
  if (!frame && !S.paused) frame = requestAnimationFrame(render);
}

// ------------------------------------------------------------------ panels

function buildPanels() {
  const box = $("#panels");
  box.replaceChildren();
  const order = ["main", "top", "side"];
  for (const where of order) {
    for (const f of FAMILIES.filter(f => f.panel === where)) {
      const panel = el(where === "side" ? "details" : "div", {class: "panel", id: `panel-${f.plural}`});
      const title = el("h2", {}, f.title + " ");
      title.append(el("span", {class: "count", id: `count-${f.kind}`}));
      panel.append(where === "side" ? el("summary") : title);
      if (where === "side") panel.firstChild.append(title);
      const table = el("table", {id: f.plural});
      const head = el("tr");
      for (const c of f.columns) head.append(el("th", {}, c.label));
      table.append(el("thead"), el("tbody"));
      table.tHead.append(head);
      table.tBodies[0].addEventListener("click", (e) => {
        const tr = e.target.closest("tr");
        if (!tr) return;
        const same = S.selected && S.selected.kind === f.kind && S.selected.id === tr.dataset.id;
        S.selected = same ? null : {kind: f.kind, id: tr.dataset.id};
        S.detail = null;
        renderDetail();
        if (S.selected) loadDetail();
      });
      const more = el("button", {class: "more", id: `more-${f.kind}`, hidden: ""}, "show more");
      more.addEventListener("click", () => showMore(f));
      panel.append(table, more, el("p", {class: "empty", id: `empty-${f.kind}`}, f.empty),
                   el("div", {class: "detail", id: `detail-${f.kind}`, hidden: ""}));
      box.append(panel);
    }
  }
}

// A cell as the family described it: pieces (each with a tone) that wrap between each
// other and never inside one, a tooltip, or a countdown to a wall-clock time.
function fillCell(td, cell) {
  const until = cell.u ?? "";
  if (String(td.dataset.until ?? "") !== String(until)) {
    if (until === "") delete td.dataset.until; else td.dataset.until = until;
  }
  const since = cell.s ?? "";  // an age: counts up
  if (String(td.dataset.since ?? "") !== String(since)) {
    if (since === "") delete td.dataset.since; else td.dataset.since = since;
  }
  const key = JSON.stringify(cell.p);
  if (since !== "") {
    const text = fmtMs(Math.max(0, serverNow() - since));
    if (td.textContent !== text || td.dataset.key !== "") { td.textContent = text; td.dataset.key = ""; }
  } else if (until !== "") {
    const left = until - serverNow();
    const text = fmtMs(left);
    if (td.textContent !== text || td.dataset.key !== "") { td.textContent = text; td.dataset.key = ""; }
    td.classList.toggle("ttl-low", left < 1000);
  } else if (td.dataset.key !== key) {
    td.dataset.key = key;
    td.classList.remove("ttl-low");
    td.classList.toggle("multi", cell.p.length > 1);  // wraps between its pieces, never inside one
    td.replaceChildren(...cell.p.flatMap(([text, tone], k) =>
      [...(k ? [" "] : []), el("span", {class: "part" + (tone ? " tone-" + tone : "")}, text)]));
  }
  const title = cell.t || "";
  if (td.title !== title) td.title = title;
}

// Rows kept by key (tr.dataset.id), in the order given: a new one made, a changed one
// filled (every time when a row has no signature), a gone one removed. Never clear-and-refill.
function syncRows(tbody, rows, fill, make = () => el("tr")) {
  const keep = new Set(rows.map(r => r.key));
  for (const tr of [...tbody.rows]) if (!keep.has(tr.dataset.id)) tr.remove();
  const existing = new Map([...tbody.rows].map(tr => [tr.dataset.id, tr]));
  let previous = null;
  for (const row of rows) {
    let tr = existing.get(row.key);
    if (!tr) { tr = make(); tr.dataset.id = row.key; }
    if (row.sig === undefined || tr.dataset.sig !== row.sig) {
      if (row.sig !== undefined) tr.dataset.sig = row.sig;
      fill(tr, row.item);
    }
    const want = previous ? previous.nextSibling : tbody.firstChild;
    if (want !== tr) tbody.insertBefore(tr, want);
    previous = tr;
  }
}

// Update a family's table by row key: add new rows, update changed cells, remove stale rows.
function syncTable(f) {
  const tbody = document.querySelector(`#${f.plural} tbody`);
  const rows = S.rows[f.kind] || new Map();
  let items = [...S.entities[f.kind].values()].filter(matches);
  const sortAt = Math.max(0, f.columns.findIndex(c => c.key === f.sort));
  const sortKey = (e) => ((rows.get(e.id) || [])[sortAt]?.p || []).map(p => p[0]).join(" ") || e.id;
  items.sort((a, b) => sortKey(a).localeCompare(sortKey(b)) || String(a.id).localeCompare(String(b.id)));
  items = items.slice(0, S.show[f.kind] || MAX_ROWS);
  const make = () => { const tr = el("tr"); tr.append(...f.columns.map(c => el("td", {class: c.key}))); return tr; };
  syncRows(tbody, items.map(item => ({key: item.id, item})), (tr, item) => {
    const cells = rows.get(item.id) || f.columns.map(() => ({p: [["?"]]}));
    cells.forEach((cell, i) => { if (tr.cells[i]) fillCell(tr.cells[i], cell); });
    tr.classList.toggle("stale", !!item.stale);
    tr.classList.toggle("selected", !!S.selected && S.selected.kind === f.kind && S.selected.id === item.id);
  }, make);
  const count = $(`#count-${f.kind}`);
  const total = Math.max(S.totals[f.kind] ?? 0, S.entities[f.kind].size);
  const n = (x) => x.toLocaleString("en");
  if (count) count.textContent = items.length < total ? `(${n(items.length)} of ${n(total)})` : `(${n(total)})`;
  const more = $(`#more-${f.kind}`);
  if (more) more.hidden = S.filter !== "" || items.length >= total;
  const empty = $(`#empty-${f.kind}`);
  if (empty) empty.hidden = total > 0;
}

// The next page of a family from GET /api/state (the websocket's snapshot carries one).
async function showMore(f) {
  const shown = S.show[f.kind] || MAX_ROWS;
  const held = S.entities[f.kind].size;
  if (held < shown + MAX_ROWS && held < (S.totals[f.kind] ?? 0)) {
    const r = await fetch(`/api/state?kind=${encodeURIComponent(f.kind)}&offset=${held}&limit=${MAX_ROWS}`);
    if (!r.ok) return;
    const page = await r.json();
    const rows = (page.rows || {})[f.kind] || {};
    for (const e of page[f.plural] || []) {
      S.entities[f.kind].set(e.id, e);
      if (rows[e.id]) S.rows[f.kind].set(e.id, rows[e.id]);
    }
    setTotals(page.totals);
  }
  S.show[f.kind] = shown + MAX_ROWS;
  S.dirty.add(f.kind);
  schedule();
}

function matches(entity) {
  if (!S.filter) return true;
  return JSON.stringify(entity).toLowerCase().includes(S.filter);
}

// One entity in full, as its family describes it (GET /api/detail): refetched when it changes.
let detailSeq = 0;
async function loadDetail() {
  const sel = S.selected;
  const mine = ++detailSeq;
  if (!sel) return;
  try {
    const resp = await fetch(`/api/detail?kind=${encodeURIComponent(sel.kind)}&id=${encodeURIComponent(sel.id)}`);
    const data = await resp.json();
    if (mine !== detailSeq) return;  // a newer request went out meanwhile
    S.detail = resp.ok ? data.lines : [[{p: [[data.error || "gone", "dim"]]}]];
  } catch (err) {
    if (mine === detailSeq) S.detail = [[{p: [[String(err), "bad"]]}]];
  }
  renderDetail();
}

function renderDetail() {
  for (const f of FAMILIES) {
    const box = $(`#detail-${f.kind}`);
    if (!box) continue;
    const mine = S.selected && S.selected.kind === f.kind;
    box.hidden = !mine;
    if (!mine) { box.replaceChildren(); continue; }
    box.replaceChildren(...(S.detail || [[{p: [["loading…", "dim"]]}]]).map(line => {
      const div = el("div", {class: "line"});
      line.forEach((cell, i) => {
        const span = el("span", {class: "cell"});
        if (i) div.append(" ");
        fillCell(span, cell);
        div.append(span);
      });
      return div;
    }));
  }
  for (const tr of document.querySelectorAll("#panels tbody tr")) {
    const f = tr.closest("table").id;
    tr.classList.toggle("selected", !!S.selected && FAMILIES.some(x => x.plural === f && x.kind === S.selected.kind)
                                    && S.selected.id === tr.dataset.id);
  }
}

function renderNodesBar() {
  const bar = $("#nodes-bar");
  bar.replaceChildren(...[...S.entities.node.values()].sort((a, b) => a.id.localeCompare(b.id))
    .map(n => el("span", {class: "pill status-" + n.status, title: `${n.address} ${n.detail}`},
                 `${n.id} ${n.status}`)));
}

function renderLog() {
  const ol = $("#log");
  const lines = S.log.filter(l => !S.filter || `${l.source} ${l.text}`.toLowerCase().includes(S.filter));
  ol.replaceChildren(...lines.slice(-150).reverse().map(l => {
    const li = el("li", {class: "log-" + l.level});
    li.append(el("time", {}, fmtTime(l.at_ms)), el("span", {class: "src"}, l.source),
              el("span", {class: "text"}, l.text));
    return li;
  }));
}

// ------------------------------------------------------------------ scenarios

async function loadFamilies() {
  const resp = await fetch("/api/families");
  FAMILIES = await resp.json();
  KINDS = FAMILIES.map(f => f.kind);
  for (const f of FAMILIES) {
    S.entities[f.kind] = S.entities[f.kind] || new Map();
    S.rows[f.kind] = S.rows[f.kind] || new Map();
  }
  buildPanels();
}

async function loadScenarios() {
  const resp = await fetch("/api/scenarios");
  S.scenarios = await resp.json();
  S.dirty.add("run");  // fault buttons of a run drawn before the catalogue came
  schedule();
  const box = $("#scenarios");
  box.replaceChildren();
  // one tab per scenario, one form shown at a time (the first by default)
  const tabs = el("div", {class: "scenario-tabs", role: "tablist"});
  box.append(tabs);
  const show = (name) => {
    for (const form of box.querySelectorAll("form.scenario")) form.hidden = form.id !== `scenario-${name}`;
    for (const tab of tabs.children) tab.classList.toggle("active", tab.dataset.name === name);
  };
  for (const sc of S.scenarios) {
    const tab = el("button", {type: "button", class: "tab", id: `pick-${sc.name}`, role: "tab", title: sc.title}, sc.name);
    tab.dataset.name = sc.name;
    tab.addEventListener("click", () => show(sc.name));
    tabs.append(tab);
    const card = el("form", {class: "scenario", id: `scenario-${sc.name}`});
    card.append(el("h3", {}, sc.title), el("p", {class: "summary"}, sc.summary),
                el("p", {class: "invariant"}, "invariant: " + sc.invariant));
    const params = el("div", {class: "params"});
    for (const p of sc.params) {
      const label = el("label", {title: p.help});
      label.append(el("span", {}, p.name));
      let input;
      if (p.choices) {
        input = el("select", {name: p.name});
        for (const c of p.choices) {
          const o = el("option", {value: c}, c);
          if (c === p.default) o.selected = true;
          input.append(o);
        }
      } else {
        input = el("input", {name: p.name, type: "number", value: p.default});
        if (p.min !== null) input.min = p.min;
        if (p.max !== null) input.max = p.max;
      }
      label.append(input);
      params.append(label);
    }
    const faults = el("div", {class: "faults"});
    faults.append(el("span", {class: "faults-title"}, "faults at start:"));
    for (const f of sc.faults) {
      const label = el("label", {title: f.help});
      const box = el("input", {type: "checkbox", name: "fault", value: f.name});
      label.append(box, document.createTextNode(" " + f.name));
      faults.append(label);
    }
    const button = el("button", {type: "submit", id: `run-${sc.name}`, class: "run"}, `Run ${sc.name}`);
    card.append(params, faults, button);
    card.addEventListener("submit", (e) => { e.preventDefault(); startRun(sc, card); });
    box.append(card);
  }
  if (S.scenarios.length) show(S.scenarios[0].name);
}


async function post(url, body) {
  const resp = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                                 body: JSON.stringify(body)});
  let data = {};
  try { data = await resp.json(); } catch { /* empty */ }
  if (!resp.ok) throw new Error(data.error || `${resp.status} ${resp.statusText}`);
  return data;
}

async function startRun(sc, form) {
  const params = {};
  for (const p of sc.params) params[p.name] = form.elements[p.name].value;
  const faults = [...form.querySelectorAll("input[name=fault]:checked")].map(i => i.value);
  $("#scenario-error").textContent = "";
  try {
    const run = await post("/api/runs", {scenario: sc.name, params, faults});
    S.selectedRun = run.id;
    S.followNewest = true;
    S.dirty.add("run");
    schedule();
  } catch (err) {
    $("#scenario-error").textContent = String(err.message);
  }
}

// ------------------------------------------------------------------ run view

const LANE_H = 26, AXIS_H = 22, LEFT = 96, RIGHT = 12;

function renderRunSelect() {
  const select = $("#run-select");
  const runs = [...S.entities.run.values()].sort((a, b) => (b.started_ms || 0) - (a.started_ms || 0));
  if (!S.selectedRun && runs.length) S.selectedRun = runs[0].id;
  const want = runs.map(r => r.id).join("|");
  if (select.dataset.ids !== want) {
    select.replaceChildren(...runs.map(r => el("option", {value: r.id}, `${r.id} — ${r.status}`)));
    select.dataset.ids = want;
  } else {
    runs.forEach((r, i) => {
      const text = `${r.id} — ${r.status}`;
      if (select.options[i].textContent !== text) select.options[i].textContent = text;
    });
  }
  if (S.selectedRun) select.value = S.selectedRun;
}

function renderRun() {
  renderRunSelect();
  const run = S.entities.run.get(S.selectedRun);
  $("#run-empty").hidden = !!run;
  const head = $("#run-head"), faults = $("#run-faults"), verdict = $("#verdict");
  const lanes = $("#lanes");
  if (!run) {
    renderRunTable(null);
    renderJourneys(null);
    head.replaceChildren(); faults.replaceChildren(); verdict.replaceChildren();

    lanes.replaceChildren(); lanes.setAttribute("height", 0);
    return;
  }
  head.replaceChildren(
    el("span", {class: "run-status status-" + run.status, id: "run-status"}, run.status),
    el("span", {class: "run-id"}, `${run.scenario}  ${run.id}`),
    el("span", {class: "run-params"}, Object.entries(run.params).map(([k, v]) => `${k}=${v}`).join(" ")
      + (run.faults.length ? "  faults: " + run.faults.join(",") : "")),
  );
  renderFaultButtons(run, faults);
  drawLanes(run, lanes);
  renderVerdict(run, verdict);
  renderRunTable(run);
  renderJourneys(run);
}

function renderFaultButtons(run, box) {
  const sc = S.scenarios.find(s => s.name === run.scenario);
  const key = `${run.id}|${run.status}|${sc ? "known" : "not loaded yet"}`;
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.replaceChildren();
  if (run.status !== "running" || !sc) return;
  box.append(el("span", {class: "faults-title"}, sc.live_faults ? "inject now:" : ""));
  for (const f of sc.live_faults ? sc.faults : []) {

    const b = el("button", {type: "button", class: "fault", title: f.help, "data-fault": f.name}, f.name);
    b.addEventListener("click", async () => {
      try { await post(`/api/runs/${encodeURIComponent(run.id)}/faults`, {fault: f.name}); }
      catch (err) { $("#scenario-error").textContent = String(err.message); }
    });
    box.append(b);
  }
  const stop = el("button", {type: "button", class: "stop"}, "stop");
  stop.addEventListener("click", () => post(`/api/runs/${encodeURIComponent(run.id)}/stop`, {})
    .catch(err => { $("#scenario-error").textContent = String(err.message); }));
  box.append(stop);
}

function drawLanes(run, root) {
  const width = Math.max(360, root.parentElement.clientWidth - 4);
  const lanes = run.lanes.filter(l => l.actor !== "runner");
  const nowT = run.status === "running" && run.started_ms ? serverNow() - run.started_ms : 0;
  let end = Math.max(nowT, 1000);
  for (const lane of lanes) {
    for (const s of lane.spans) end = Math.max(end, s.end_ms ?? s.start_ms);
    for (const t of lane.ticks) end = Math.max(end, t.at_ms);
  }
  const height = AXIS_H + lanes.length * LANE_H + 6;
  const tones = toneIndex(run);
  root.setAttribute("width", width);
  root.setAttribute("height", height);
  root.setAttribute("viewBox", `0 0 ${width} ${height}`);
  const x = (t) => LEFT + (width - LEFT - RIGHT) * Math.min(t, end) / end;
  const parts = [];
  // time axis
  const step = niceStep(end);
  for (let t = 0; t <= end; t += step) {
    parts.push(svg("line", {x1: x(t), x2: x(t), y1: AXIS_H - 4, y2: height, class: "grid"}));
    const label = step % 60000 === 0 ? `${t / 60000}m` : `${(t / 1000).toFixed(1)}s`;
    parts.push(svg("text", {x: x(t), y: AXIS_H - 8, class: "axis"}, label));
  }
  // fault windows shade every lane
  for (const lane of lanes) for (const s of lane.spans) if (s.kind === "fault") {
    const x1 = x(s.start_ms), x2 = x(s.end_ms ?? nowT ?? end);
    parts.push(svg("rect", {x: x1, y: AXIS_H, width: Math.max(2, x2 - x1), height: height - AXIS_H,
                            class: "fault-window"}, ""));
  }
  lanes.forEach((lane, i) => {
    const y = AXIS_H + i * LANE_H;
    parts.push(svg("text", {x: 4, y: y + 17, class: "actor"}, short(lane.actor, 12)));
    parts.push(svg("line", {x1: LEFT, x2: width - RIGHT, y1: y + LANE_H - 1, y2: y + LANE_H - 1, class: "lane-sep"}));
    for (const s of lane.spans) {
      if (s.kind === "fault") continue;
      const open = s.end_ms === null || s.end_ms === undefined;
      const endT = open ? (nowT || end) : s.end_ms;
      const x1 = x(s.start_ms), x2 = x(endT);
      const geo = spanGeometry(s.kind, y);
      const rect = svg("rect", {x: x1, y: geo.y, width: Math.max(1.5, x2 - x1), height: geo.h,
                                class: `span span-${s.kind} outcome-${s.outcome || "open"}` +
                                       (s.tone in tones ? ` tone-${tones[s.tone]}` : "")});
      const by = s.tone ? ` served by ${s.tone}` : "";
      rect.append(svg("title", {}, `${s.kind} ${s.label} ${s.start_ms}–${open ? "…" : s.end_ms} ms ${s.outcome}${by}`));
      parts.push(rect);
      if (s.kind === "hold" && s.label && x2 - x1 > 36) {
        parts.push(svg("text", {x: x1 + 3, y: geo.y + geo.h - 4, class: "span-label"}, s.label));
      }
    }
    for (const t of lane.ticks) {
      const cx = x(t.at_ms);
      const followed = S.journey && t.msg === S.journey;
      const cls = `tick tick-${t.kind}` + (t.msg ? " has-msg" : "") +
                  (S.journey ? (followed ? " followed" : " faded") : "");
      const mark = svg("path", {d: tickPath(t.kind, cx, y + 13), class: cls});
      if (t.msg) mark.dataset.msg = t.msg;
      mark.append(svg("title", {}, `${t.kind} at ${t.at_ms} ms ${t.label}` + (t.msg ? ` (message ${t.msg}: click to follow)` : "")));
      parts.push(mark);
    }
  });
  if (run.verdict && run.verdict.at_ms !== null && !run.verdict.holds) {
    const vx = x(run.verdict.at_ms);
    parts.push(svg("line", {x1: vx, x2: vx, y1: AXIS_H, y2: height, class: "violation-line"}));
  }
  root.replaceChildren(...parts);
  renderLegend(run);
}

// Each instance that served a request gets a colour: its place among the run's tones.
const TONES = 6;
function toneIndex(run) {
  const out = {};
  (run.legend || []).filter(l => l[0] === "tone").forEach(([, name], i) => { out[name] = i % TONES; });
  return out;
}

function spanGeometry(kind, y) {
  switch (kind) {
    case "hold": return {y: y + 4, h: 13};
    case "lease": case "suspended": case "lost": return {y: y + 19, h: 4};
    case "wait": return {y: y + 8, h: 5};
    case "pause": return {y: y + 2, h: 17};
    case "request": return {y: y + 6, h: 9};
    default: return {y: y + 9, h: 4};
  }
}

function tickPath(kind, x, y) {
  if (kind === "granted" || kind === "refused") return `M${x} ${y + 6} L${x + 3} ${y + 9} L${x} ${y + 12} L${x - 3} ${y + 9} Z`;
  if (kind === "violation") return `M${x} ${y - 9} L${x + 7} ${y + 5} L${x - 7} ${y + 5} Z`;
  if (kind === "login") return `M${x - 5} ${y} H${x + 4} M${x + 4} ${y} l-4 -4 M${x + 4} ${y} l-4 4`;
  if (kind === "logout") return `M${x + 5} ${y} H${x - 4} M${x - 4} ${y} l4 -4 M${x - 4} ${y} l4 4`;
  if (kind === "expired") return `M${x - 5} ${y - 6} h10 L${x - 5} ${y + 6} h10 Z`;  // an hourglass
  if (kind === "leak") return `M${x} ${y - 9} L${x + 7} ${y + 5} L${x - 7} ${y + 5} Z`;
  if (["rejected", "crash", "lost", "error", "mismatch", "kicked"].includes(kind)) return `M${x - 5} ${y - 5} L${x + 5} ${y + 5} M${x + 5} ${y - 5} L${x - 5} ${y + 5}`;
  if (kind === "decision" || kind === "abort") return `M${x} ${y - 6} L${x + 6} ${y} L${x} ${y + 6} L${x - 6} ${y} Z`;
  if (kind === "commit") return `M${x - 5} ${y} L${x - 1} ${y + 5} L${x + 6} ${y - 6}`;  // a check mark
  if (kind === "rollback") return `M${x + 5} ${y + 4} V${y - 3} H${x - 4} M${x - 4} ${y - 3} l3 -3 M${x - 4} ${y - 3} l3 3`;
  if (kind === "twice" || kind === "blocked") return `M${x} ${y - 9} L${x + 7} ${y + 5} L${x - 7} ${y + 5} Z`;
  if (["prepared", "tried", "recover", "suspended", "vote-no", "fenced"].includes(kind)) return `M${x - 4} ${y - 4} h8 v8 h-8 Z`;
  if (kind === "committed") return `M${x - 5} ${y} L${x - 1} ${y + 5} L${x + 6} ${y - 6}`;  // a check mark
  if (kind === "rolled-back") return `M${x + 5} ${y + 4} V${y - 3} H${x - 4} M${x - 4} ${y - 3} l3 -3 M${x - 4} ${y - 3} l3 3`;
  if (kind === "half") return `M${x - 5} ${y + 5} V${y - 5} H${x + 5} Z`;  // half a square
  if (kind === "published" || kind === "notify") return `M${x - 5} ${y - 5} L${x + 5} ${y} L${x - 5} ${y + 5} Z`;  // sent on
  if (kind === "marked") return `M${x - 4} ${y - 1} h8 v2 h-8 Z`;  // a bar: the row ticked off
  if (kind === "check") return `M${x} ${y - 6} A6 6 0 1 1 ${x - 6} ${y} M${x} ${y - 6} l-3 -2 M${x} ${y - 6} l-3 3`;
  if (kind === "discarded" || kind === "gave-up") return `M${x - 5} ${y - 5} L${x + 5} ${y + 5} M${x + 5} ${y - 5} L${x - 5} ${y + 5}`;
  if (kind === "applied" || kind === "acked" || kind === "reconciled") return `M${x - 5} ${y - 5} h10 v10 h-10 Z`;
  if (kind === "charge") return `M${x - 5} ${y - 5} h10 v10 h-10 Z`;  // a square: money moved
  if (kind === "replay" || kind === "replayed") return `M${x} ${y - 6} A6 6 0 1 1 ${x - 6} ${y} M${x} ${y - 6} l-3 -2 M${x} ${y - 6} l-3 3`;
  if (kind === "emit") return `M${x - 2} ${y - 2} h4 v4 h-4 Z`;  // a small dot: an event sent
  if (kind === "requeue") return `M${x + 5} ${y - 4} H${x - 3} M${x - 3} ${y - 4} l3 -3 M${x - 3} ${y - 4} l3 3 M${x + 5} ${y - 4} V${y + 4}`;
  if (kind === "conflict" || kind === "timeout") return `M${x} ${y - 6} L${x + 6} ${y + 5} L${x - 6} ${y + 5} Z`;
  return `M${x} ${y - 5} L${x + 5} ${y} L${x} ${y + 5} L${x - 5} ${y} Z`;
}

function niceStep(end) {
  const raw = end / 8;
  for (const s of [100, 250, 500, 1000, 2000, 5000, 10000, 30000, 60000]) if (raw <= s) return s;
  return 60000 * Math.ceil(raw / 60000);  // whole minutes, however long (or odd) the run
}

// What the lanes show: only the kinds this run uses, named by the run itself (run.legend).
function renderLegend(run) {
  const box = $("#legend");
  const key = (run.legend || []).map(l => l.join(":")).join("|");
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  const tones = toneIndex(run);
  box.replaceChildren(...(run.legend || []).map(([what, kind, meaning]) => {
    const s = el("span", {class: "legend-item"});
    const cls = what === "span" ? (kind === "fault" ? "fault-window" : `span-${kind}`)
      : what === "line" ? "violation-swatch" : what === "tone" ? `tone-${tones[kind]}` : `tick-${kind}`;
    s.append(el("i", {class: "swatch " + cls}), document.createTextNode(meaning));
    return s;
  }));
}

// Messages (outbox, half messages, notifications): each one's path across the lanes.
// A click on a row or on a tick that names a message follows it: its steps listed, its
// ticks lit on every lane, the others faded. A second click lets it go.
function follow(msg) {
  S.journey = S.journey === msg ? null : msg;
  S.dirty.add("run");
  schedule();
}

function renderJourneys(run) {
  const box = $("#journeys"), body = $("#journey-list").tBodies[0], detail = $("#journey");
  const list = run ? (run.journeys || []) : [];
  box.hidden = list.length === 0;
  if (!list.length) { body.replaceChildren(); detail.hidden = true; return; }
  const many = run.messages > list.length
    ? `${list.length} of ${run.messages}: every one something unusual happened to, then the latest` : `${list.length}`;
  const title = `messages (${many}) — click one (or its mark on a lane) to follow its whole path`;
  if ($(".journeys-title").textContent !== title) $(".journeys-title").textContent = title;
  const key = list.map(j => `${j.msg}|${j.path}|${j.bad}`).join("\n") + "|" + (S.journey || "");
  if (body.dataset.key !== key) {
    body.dataset.key = key;
    body.replaceChildren(...list.map(j => {
      const tr = el("tr", {class: "journey-row" + (j.bad ? " bad" : "") + (j.msg === S.journey ? " selected" : ""),
                           "data-msg": j.msg, title: "click to follow this message"});
      tr.append(el("td", {class: "msg"}, j.msg), el("td", {}, j.steps.length), el("td", {class: "path"}, j.path));
      return tr;
    }));
  }
  const chosen = list.find(j => j.msg === S.journey);
  detail.hidden = !chosen;
  if (!chosen) return;
  const dkey = `${chosen.msg}|${chosen.steps.length}|${chosen.path}`;
  if (detail.dataset.key === dkey) return;
  detail.dataset.key = dkey;
  const ol = el("ol", {class: "steps"});
  for (const s of chosen.steps) {
    const li = el("li", {class: "step step-" + s.what});
    li.append(el("span", {class: "at"}, `${(s.at_ms / 1000).toFixed(3)}s`), el("span", {class: "actor"}, s.actor),
              el("span", {class: "what"}, s.what), el("span", {class: "note"}, s.note));
    ol.append(li);
  }
  detail.replaceChildren(el("p", {class: "journey-title"}, `message ${chosen.msg}: ${chosen.path}`), ol);
}

// A scenario's own table (RedLock attempts, charges per order): rows are added or redrawn.
function renderRunTable(run) {
  const table = $("#run-table");
  const rows = run ? run.table : [];
  const key = run ? `${run.id}|${(rows[0] || []).join("|")}` : "";
  if (table.dataset.key !== key) {
    table.dataset.key = key;
    table.tHead.replaceChildren();
    table.tBodies[0].replaceChildren();
    if (rows.length) {
      const tr = el("tr");
      for (const h of rows[0]) tr.append(el("th", {}, h));
      table.tHead.append(tr);
    }
  }
  const body = table.tBodies[0];
  rows.slice(1).forEach((row, i) => {
    let tr = body.rows[i];
    if (!tr) {
      tr = el("tr");
      for (const c of row) tr.append(el("td", {}, c));
      body.append(tr);
      return;
    }
    row.forEach((c, j) => {  // a row that changed (an order charged meanwhile) is redrawn
      if (tr.cells[j] && tr.cells[j].textContent !== c) tr.cells[j].textContent = c;
    });
  });
  table.hidden = rows.length === 0;
}

function renderVerdict(run, box) {
  box.replaceChildren();
  box.className = "";
  if (run.error) box.append(el("p", {class: "verdict-error"}, "error: " + run.error));
  const v = run.verdict;
  if (!v) {
    if (run.status === "running") box.append(el("p", {class: "pending"}, `judging live… ${run.last_op}`));
    return;
  }
  box.className = v.holds ? "verdict-held" : "verdict-violated";
  box.append(el("p", {class: "verdict-title"}, (v.holds ? "✔ HELD — " : "✘ VIOLATED — ") + v.invariant),
             el("p", {class: "verdict-summary"}, v.summary));
  if (v.actors.length) box.append(el("p", {}, "actors: " + v.actors.join(", ")));
  if (v.keys.length) box.append(el("p", {class: "keys"}, "keys: " + v.keys.join(", ")));
  if (v.findings.length) {
    const ul = el("ul", {class: "findings"});
    for (const f of v.findings) ul.append(el("li", {}, f));
    box.append(ul);
  }
}

// ------------------------------------------------------------------ main loop

function render() {
  frame = 0;
  if (S.paused) return;
  const dirty = S.dirty;
  S.dirty = new Set();
  for (const f of FAMILIES) if (dirty.has(f.kind) && f.panel !== "none") syncTable(f);
  if (dirty.has("node")) renderNodesBar();
  if (dirty.has("run")) renderRun();
  if (dirty.has("run") || dirty.has("ring")) renderRing(S.entities.run.get(S.selectedRun));
  if (dirty.has("log")) renderLog();
}

function tick() {
  // TTLs count down between events; a running run's lanes grow.
  for (const td of document.querySelectorAll("[data-until]")) {
    const left = Number(td.dataset.until) - serverNow();
    const text = fmtMs(left);
    if (td.textContent !== text) td.textContent = text;
    td.classList.toggle("ttl-low", left < 1000);
  }
  for (const td of document.querySelectorAll("[data-since]")) {
    const text = fmtMs(Math.max(0, serverNow() - Number(td.dataset.since)));
    if (td.textContent !== text) td.textContent = text;
  }
  const run = S.entities.run.get(S.selectedRun);
  if (run && run.status === "running" && !S.paused) { S.dirty.add("run"); schedule(); }
}

function init() {
  $("#filter").addEventListener("input", (e) => {
    S.filter = e.target.value.trim().toLowerCase();
    for (const k of KINDS) S.dirty.add(k);
    S.dirty.add("log");
    schedule();
  });
  $("#pause").addEventListener("change", (e) => {
    S.paused = e.target.checked;
    if (!S.paused) { for (const k of KINDS) S.dirty.add(k); S.dirty.add("log"); schedule(); }
  });
  $("#journey-list").addEventListener("click", (e) => {
    const row = e.target.closest("tr[data-msg]");
    if (row) follow(row.dataset.msg);
  });
  $("#lanes").addEventListener("click", (e) => {
    const mark = e.target.closest("[data-msg]");
    if (mark) follow(mark.dataset.msg);
  });
  $("#run-select").addEventListener("change", (e) => {
    S.journey = null;

    S.selectedRun = e.target.value;
    S.followNewest = false;
    S.dirty.add("run");
    schedule();
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "/" && document.activeElement !== $("#filter")) { e.preventDefault(); $("#filter").focus(); }
  });
  loadScenarios().catch(err => { $("#scenario-error").textContent = "cannot load scenarios: " + err; });
  loadFamilies().then(connect).catch(err => { $("#scenario-error").textContent = "cannot load the panels: " + err; });
  setInterval(tick, 200);
}

document.addEventListener("DOMContentLoaded", init);
