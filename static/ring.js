// coordscope web view: the ring of an ordering run, in the run pane (GET /api/families
// lists rings like any family; their entities arrive in S.entities.ring, see app.js).
//
// The circle is the 2^32 hash space, 0 at the top, clockwise. Each virtual node is a short
// radial tick in its worker's colour; each order a dot at its own point in its owner's
// colour, outlined red when its applied sequence broke, ringed dashed when the last change
// of the ring moved it. A legend row per worker, the last change, then each order's
// applied sequence with the application that broke it in red. Routes that do not hash
// (round-robin, zk-seq) have no circle: only the tables.
//
// A ring is upserted whenever a worker's queue changes (many times a second under load):
// the ticks are rebuilt only when the ring's points change, the dots only when an order's
// place, owner, breach or move changes, and the tables update cell by cell.
// Uses el(), svg(), S and fmtTime() from app.js. Every value is untrusted text: it reaches
// the page through textContent and SVG attributes only.
"use strict";

const RING = {size: 236, r: 88, tick: 11, dot: 4.5};
const RING_TURN = 4294967296;  // 2^32
const RING_COLOURS = 8;  // .wc-0 ... .wc-7 in app.css (red is kept for breaches)

// A worker's colour class. It keeps its colour when others join or leave: worker-3 is always
// the third colour (names without a number get one from their text).
function ringColour(name) {
  const m = /(\d+)$/.exec(String(name));
  let i = 0;
  if (m) i = Number(m[1]) - 1;
  else for (const ch of String(name)) i = (i * 31 + ch.charCodeAt(0)) >>> 0;
  return "wc-" + (((i % RING_COLOURS) + RING_COLOURS) % RING_COLOURS);
}

function ringOf(run) {
  if (!run || !S.entities.ring) return null;
  for (const ring of S.entities.ring.values()) if (ring.run === run.id) return ring;
  return null;
}

// A point of the circle at radius r: 0 at the top, clockwise.
function ringXY(point, r) {
  const a = (Number(point) / RING_TURN) * 2 * Math.PI;
  const c = RING.size / 2;
  return [c + r * Math.sin(a), c - r * Math.cos(a)];
}

function renderRing(run) {
  const box = $("#ring");
  const ring = ringOf(run);
  box.hidden = !ring;
  const id = ring ? ring.id : "";
  if ((box.dataset.id || "") !== id) {  // another ring, or none: nothing of the last one stays
    box.dataset.id = id;
    const root = $("#ring-svg");
    delete root.dataset.ticks;
    delete root.dataset.dots;
    root.replaceChildren();
    $("#ring-workers").tBodies[0].replaceChildren();
    $("#ring-orders").tBodies[0].replaceChildren();
  }
  if (!ring) return;
  renderRingTitle(ring);
  drawRing(ring);
  renderRingWorkers(ring);
  const change = $("#ring-change");
  setText(change, ring.change ? `last change ${fmtTime(ring.changed_ms)}  ${ring.change}` : "");
  change.hidden = !ring.change;
  renderRingOrders(ring);
}

function setText(node, text) {
  if (node.textContent !== text) node.textContent = text;
}

const BREACHES_NAMED = 5;  // the title names the first few; the orders' table marks every one

function renderRingTitle(ring) {
  const total = ring.orders.length + (ring.more_orders || 0);
  const breached = ring.orders.filter(o => o.breach).map(o => o.order);
  const how = ring.points.length
    ? `${ring.route} ring v${ring.version} · ${ring.vnodes} virtual nodes per worker`
    : `${ring.route}: no hash ring, each event goes to the next worker in turn`;
  const bad = breached.length
    ? `${breached.length} breached: ${breached.slice(0, BREACHES_NAMED).join(", ")}`
      + (breached.length > BREACHES_NAMED ? ", …" : "")
    : "";
  const split = ring.orders.filter(o => o.split.length).length;
  const box = $("#ring-title");
  const key = JSON.stringify([how, total, bad, split]);
  if (box.dataset.key === key) return;
  box.dataset.key = key;
  box.replaceChildren(el("span", {class: "how"}, how), ` · ${total} orders`);
  if (bad) box.append(", ", el("span", {class: "tone-bad"}, bad));
  if (split) box.append(", ", el("span", {class: "tone-warn"}, `${split} in two queues now`));
}

function drawRing(ring) {
  const root = $("#ring-svg");
  const hashing = ring.points.length > 0;
  root.toggleAttribute("hidden", !hashing);
  if (!hashing) return;
  const names = ring.workers.map(w => w.name);
  // a cheap signature of the points: rebuild the ticks only when the ring changed
  let sum = 0;
  for (const [p, w] of ring.points) sum = (sum * 31 + p + w * 7) % 1000000007;
  const ticksKey = `${ring.version}|${names.join(",")}|${ring.points.length}|${sum}`;
  if (root.dataset.ticks !== ticksKey) {
    root.dataset.ticks = ticksKey;
    const n = RING.size;
    root.setAttribute("viewBox", `0 0 ${n} ${n}`);
    root.setAttribute("width", n);
    root.setAttribute("height", n);
    const parts = [svg("circle", {cx: n / 2, cy: n / 2, r: RING.r, class: "ring-base"})];
    for (const [p, w] of ring.points) {
      const [x1, y1] = ringXY(p, RING.r);
      const [x2, y2] = ringXY(p, RING.r + RING.tick);
      parts.push(svg("line", {x1, y1, x2, y2, class: `vnode ${ringColour(names[w])}`, "data-worker": names[w]}));
    }
    const [zx, zy] = ringXY(0, RING.r + RING.tick + 8);
    parts.push(svg("text", {x: zx, y: zy, class: "ring-zero"}, "0"));
    parts.push(svg("text", {x: n / 2, y: n / 2 - 6, class: "ring-centre"}, `v${ring.version}`));
    parts.push(svg("text", {x: n / 2, y: n / 2 + 10, class: "ring-centre dim"},
                    `${ring.workers.filter(w => w.share !== null).length} × ${ring.vnodes}`));
    parts.push(svg("g", {id: "ring-dots"}));
    root.replaceChildren(...parts);
    delete root.dataset.dots;
  }
  const dotsKey = JSON.stringify(ring.orders.map(o => [o.order, o.point, o.owner, o.breach, o.moved]));
  if (root.dataset.dots !== dotsKey) {
    root.dataset.dots = dotsKey;
    $("#ring-dots").replaceChildren(...orderDots(ring.orders));
  }
}

// Orders close together on the circle step inwards (up to four lanes), so each dot stays
// visible; breached orders are drawn last, on top of any that still overlap.
function orderDots(orders) {
  const placed = orders.filter(o => o.point !== null).sort((a, b) => a.point - b.point);
  const lanes = [-Infinity, -Infinity, -Infinity, -Infinity];
  const near = RING_TURN / 72;  // 5 degrees
  const dots = [];
  for (const o of placed) {
    let lane = lanes.findIndex(last => o.point - last >= near);
    if (lane < 0) lane = lanes.indexOf(Math.min(...lanes));
    lanes[lane] = o.point;
    const [cx, cy] = ringXY(o.point, RING.r - 10 - lane * 12);
    const g = svg("g", {class: "order" + (o.breach ? " breached" : "") + (o.moved ? " moved" : ""),
                        "data-order": o.order});
    if (o.moved) g.append(svg("circle", {cx, cy, r: RING.dot + 3, class: "moved-mark"}));
    g.append(svg("circle", {cx, cy, r: o.breach ? RING.dot + 1 : RING.dot,
                            class: "dot " + (o.owner ? ringColour(o.owner) : "wc-none")}));
    const seqs = o.applied.map(a => a.seq).join(" ") || "nothing applied";
    g.append(svg("title", {}, `${o.order} → ${o.owner || "any worker"}: ${seqs}`
      + (o.breach ? ` (${o.breach})` : "") + (o.moved ? `; moved ${o.moved}` : "")));
    dots.push([o.breach ? 1 : 0, g]);
  }
  return dots.sort((a, b) => a[0] - b[0]).map(([, g]) => g);
}

const count = (n) => (n === null || n === undefined ? "?" : String(n));

function renderRingWorkers(ring) {
  const hashing = ring.points.length > 0;
  const rows = ring.workers.map(w => ({key: w.name, item: w, sig: JSON.stringify(w) + hashing}));
  syncRows($("#ring-workers").tBodies[0], rows, (tr, w) => {
    const name = el("td", {class: "worker"});
    name.append(el("i", {class: `swatch ${ringColour(w.name)}`}), w.name);
    if (w.leaving) name.append(" ", el("span", {class: "tone-warn"}, "leaving"));
    // a crashed incarnation keeps its pending entries until claimed: say whose they are
    const consumers = w.consumers.map(([c, p]) => `${c}: ${p} pending`).join("\n");
    const pending = el("td", {class: "pending" + (w.pending ? " tone-warn" : ""), title: consumers}, count(w.pending));
    if (w.consumers.length > 1) pending.append(el("span", {class: "dim"}, ` (${w.consumers.length} consumers)`));
    tr.title = w.queue;
    tr.replaceChildren(
      name,
      el("td", {class: "share"}, w.share === null ? "–" : `${(w.share * 100).toFixed(1)}%`),
      el("td", {class: "orders"}, hashing ? w.orders : "–"),  // without a ring no order is anyone's
      el("td", {class: "depth" + (w.depth ? " tone-warn" : "")}, count(w.depth)),
      pending,
    );
  });
}

function renderRingOrders(ring) {
  const rows = ring.orders.map(o => ({key: o.order, item: o, sig: JSON.stringify(o)}));
  syncRows($("#ring-orders").tBodies[0], rows, (tr, o) => {
    tr.className = o.breach ? "breached" : "";
    const applied = el("td", {class: "applied"});
    for (const a of o.applied) {
      applied.append(el("span", {class: "seq" + (a.breach ? " seq-bad" : ""),
                                 title: `seq ${a.seq} by ${a.worker}` + (a.breach ? `: ${a.breach}` : "")}, a.seq));
    }
    if (!o.applied.length) applied.append(el("span", {class: "dim"}, "nothing applied"));
    if (o.breach) applied.append(el("span", {class: "breach"}, o.breach));
    const owner = el("td", {class: "owner"});
    if (o.owner) owner.append(el("i", {class: `swatch ${ringColour(o.owner)}`}), o.owner);
    else owner.append(el("span", {class: "dim"}, "any worker"));
    const moved = el("td", {class: "moved", title: o.moved}, o.moved ? `from ${o.moved.split(" -> ")[0]}` : "");
    if (o.split.length) {  // its events not applied yet sit in two queues: two workers may race
      moved.append(el("span", {class: "split", title: `events not applied yet in the queues of ${o.split.join(", ")}`},
                      `in ${o.split.length} queues`));
    }
    tr.replaceChildren(
      el("td", {class: "order", title: o.state ? `${o.order}: ${o.state}` : o.order}, o.order),
      applied,
      owner,
      // "before -> after": the owner column already says after
      moved,
    );
  });
  const more = $("#ring-more");
  setText(more, ring.more_orders ? `… and ${ring.more_orders} more order(s)` : "");
  more.hidden = !ring.more_orders;
}
