// coordscope replay controls: shown only when GET /api/replay says this server replays a
// recording (coordscope replay FILE --web). Play, pause, speed and the scrubber talk to the
// server (POST /api/replay); every viewer of the server shares one playhead, so the bar polls
// GET /api/replay and moves the thumb between answers at the replay's speed.
// Recorded text (the file name) reaches the page through textContent only.
// Uses S (app.js's state) for one thing: TTL countdowns and a running run's lanes count
// against the recorded moment on screen, not the browser's clock.
"use strict";

const REPLAY = {status: null, fetchedAt: 0, dragging: false, pending: 0};

function replayEl(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function replayPosition() {
  const st = REPLAY.status;
  if (!st) return 0;
  if (st.state !== "playing") return st.position_ms;
  return Math.min(st.end_ms, st.position_ms + (Date.now() - REPLAY.fetchedAt) * st.speed);
}

function replayClock(ms) {
  return new Date(ms).toLocaleTimeString([], {hour12: false});
}

function replayDuration(ms) {
  const s = Math.max(0, Math.floor(ms / 1000));
  const h = Math.floor(s / 3600), m = Math.floor(s / 60) % 60, r = s % 60;
  const two = (n) => String(n).padStart(2, "0");
  return h ? `${h}:${two(m)}:${two(r)}` : `${m}:${two(r)}`;
}

function replayAccept(status) {
  REPLAY.status = status;
  REPLAY.fetchedAt = Date.now();
  renderReplayBar();
}

async function replayPoll() {
  if (REPLAY.pending) return;  // a change is on its way: its answer is newer
  try {
    const resp = await fetch("/api/replay");
    if (resp.ok && !REPLAY.pending) replayAccept(await resp.json());
  } catch { /* the websocket's label says when the server is gone */ }
}

async function replaySend(body) {
  REPLAY.pending++;
  try {
    const resp = await fetch("/api/replay", {method: "POST", headers: {"Content-Type": "application/json"},
                                             body: JSON.stringify(body)});
    const data = await resp.json();
    if (!resp.ok) throw new Error(data.error || `${resp.status}`);
    replayAccept(data);
    document.getElementById("replay-error").textContent = "";
  } catch (err) {
    document.getElementById("replay-error").textContent = String(err.message || err);
  } finally {
    REPLAY.pending--;
  }
}

function replayToggle() {
  const st = REPLAY.status;
  if (st) replaySend({action: st.state === "playing" ? "pause" : "play"});
}

function replayStep(deltaMs) {
  if (REPLAY.status) replaySend({action: "seek", at_ms: Math.round(replayPosition() + deltaMs)});
}

function buildReplayBar(st) {
  document.body.classList.add("replay");
  const bar = replayEl("div", {id: "replay-bar", role: "toolbar", "aria-label": "replay"});
  const toggle = replayEl("button", {type: "button", id: "replay-toggle"});
  const speed = replayEl("select", {id: "replay-speed", "aria-label": "speed"});
  for (const s of st.speeds) speed.append(replayEl("option", {value: String(s)}, `${s}×`));
  const scrub = replayEl("input", {type: "range", id: "replay-scrub", min: "0", max: String(st.duration_ms),
                                   step: "1", value: "0", "aria-label": "position in the recording"});
  bar.append(
    toggle, speed,
    replayEl("span", {id: "replay-time", class: "replay-time", title: "the recorded moment shown"}),
    replayEl("span", {id: "replay-elapsed", class: "replay-elapsed"}),
    scrub,
    replayEl("span", {id: "replay-state", class: "replay-state"}),
    replayEl("span", {class: "replay-readonly", title: st.read_only}, "replay: read-only"),
    replayEl("span", {id: "replay-file", class: "replay-file", title: st.file}, st.file.split("/").pop()),
    replayEl("span", {id: "replay-error", class: "error", role: "alert"}),
  );
  document.querySelector("header").after(bar);
  toggle.addEventListener("click", replayToggle);
  speed.addEventListener("change", () => replaySend({speed: Number(speed.value)}));
  // dragging previews the moment; letting go (change) seeks there, for every viewer
  scrub.addEventListener("input", () => { REPLAY.dragging = true; renderReplayBar(); });
  scrub.addEventListener("change", () => {
    REPLAY.dragging = false;
    replaySend({action: "seek", at_ms: REPLAY.status.start_ms + Number(scrub.value)});
  });
  // ←/→ step a second, on the scrubber too (its own arrows would move a millisecond)
  document.addEventListener("keydown", (e) => {
    const typing = e.target.closest && e.target.closest("input[type=search], input[type=number], select, textarea");
    if (typing || e.ctrlKey || e.metaKey || e.altKey) return;
    if (e.key === " " && e.target !== toggle) { e.preventDefault(); replayToggle(); }
    else if (e.key === "ArrowLeft") { e.preventDefault(); replayStep(-1000); }
    else if (e.key === "ArrowRight") { e.preventDefault(); replayStep(1000); }
  });
}

function renderReplayBar() {
  const st = REPLAY.status;
  if (!st) return;
  const scrub = document.getElementById("replay-scrub");
  const at = REPLAY.dragging ? st.start_ms + Number(scrub.value) : replayPosition();
  if (!REPLAY.dragging) {
    scrub.max = String(st.duration_ms);
    scrub.value = String(Math.round(at - st.start_ms));
  }
  const set = (id, text) => { const n = document.getElementById(id); if (n.textContent !== text) n.textContent = text; };
  set("replay-time", replayClock(at));
  set("replay-elapsed", `${replayDuration(at - st.start_ms)} / ${replayDuration(st.duration_ms)}`);
  set("replay-state", st.state);
  set("replay-toggle", st.state === "playing" ? "❚❚ pause" : "▶ play");
  document.getElementById("replay-state").className = "replay-state replay-" + st.state;
  const speed = document.getElementById("replay-speed");
  if (document.activeElement !== speed && Number(speed.value) !== st.speed) speed.value = String(st.speed);
  const conn = document.getElementById("conn");
  if (conn.textContent === "live") conn.textContent = "replay";
  // countdowns (TTLs) and a running run's lanes: against the recorded moment on screen
  if (typeof S !== "undefined") S.clockOffset = replayPosition() - Date.now();
}

async function initReplay() {
  let st;
  try {
    const resp = await fetch("/api/replay");
    st = await resp.json();
  } catch { return; }
  if (!st || st.mode !== "replay") return;
  buildReplayBar(st);
  replayAccept(st);
  setInterval(replayPoll, 500);
  setInterval(renderReplayBar, 100);
}

document.addEventListener("DOMContentLoaded", initReplay);
