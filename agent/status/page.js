// The technicians' status page: redraws itself from /page.json every two seconds.
// Every value from the agent is put in with textContent (never as HTML). Words of the page
// itself go through the t function, whose msgids tests/test_i18n.py checks in the catalogs.
"use strict";

const POLL_MS = 2000;
const LEVEL_MS = 200;
let lang = null;
let strings = {};
let levelTimer = null;
let lastSnapshot = null;
let lastLevel = null;

// The page's key (docs/security.md): `classroom-agent page` prints this page's address with it
// after "#key=". A fragment never goes to the server; the key goes only in the X-Page-Key header
// of the snapshot and level requests. Kept for this tab and taken out of the address bar.
const PAGE_KEY = takeKey();

function takeKey() {
  const m = /(?:^#|&)key=([A-Za-z0-9_-]{16,128})/.exec(location.hash);
  let key = m ? m[1] : null;
  try {
    if (key) sessionStorage.setItem("classroom-agent-key", key);
    else key = sessionStorage.getItem("classroom-agent-key");
  } catch (e) { /* private mode: the key lives as long as the page */ }
  if (m) history.replaceState(null, "", location.pathname + location.search);
  return key;
}

function t(msgid) { return strings[msgid] || msgid; }
function fill(text, values) {
  return text.replace(/\{(\w+)\}/g, (m, k) => (k in values ? String(values[k]) : m));
}
function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
function $(id) { return document.getElementById(id); }
function q() { return "?lang=" + encodeURIComponent(lang || ""); }
function locale() { return lang === "zh_CN" ? "zh-CN" : "en-GB"; }
function when(iso) { return iso ? new Date(iso).toLocaleString(locale()) : ""; }
function minutes(s) { return typeof s === "number" ? Math.round(s / 60) : "?"; }

const STATE = { good: () => t("good"), warning: () => t("warning"), fault: () => t("fault") };

async function getJSON(path, keyed) {
  const headers = keyed && PAGE_KEY ? { "X-Page-Key": PAGE_KEY } : {};
  const r = await fetch(path, { cache: "no-store", headers });
  const doc = await r.json();
  return { status: r.status, doc };
}

async function setLang(next) {
  lang = next;
  try { localStorage.setItem("classroom-agent-lang", next); } catch (e) { /* private mode */ }
  strings = next === "en" ? {} : (await getJSON("/i18n.json" + q())).doc;
  document.documentElement.lang = next === "zh_CN" ? "zh-CN" : "en";
  for (const b of document.querySelectorAll("button[data-lang]")) {
    b.setAttribute("aria-pressed", String(b.dataset.lang === next));
  }
  staticWords();
  await refresh();
}

function staticWords() {
  $("h-lesson").textContent = t("Lesson");
  $("h-camera").textContent = t("Camera snapshot");
  $("h-mic").textContent = t("Microphone level");
  $("h-events").textContent = t("Recent events");
  $("snapshot-button").textContent = t("Take a snapshot");
  $("level-button").textContent = levelTimer ? t("Stop listening") : t("Listen");
  $("privacy").textContent = t("The snapshot and the level are computed on this PC when you ask, shown here only, never stored and never sent.");
  if (lastSnapshot) showSnapshot(lastSnapshot);
  if (lastLevel) showLevel(lastLevel);
}

function card(s) {
  const c = el("article", "card " + s.state);
  c.id = "subsystem-" + s.id;
  c.dataset.state = s.state;
  const h = el("h3");
  h.append(el("span", "", s.title), el("span", "state", STATE[s.state]()));
  c.append(h);
  for (const line of s.lines) c.append(el("p", "", line));
  for (const p of s.problems) {
    const box = el("div", "problem " + p.severity);
    box.dataset.code = p.code;
    box.append(el("p", "cause", p.cause));
    if (p.next_step) box.append(el("p", "next-step", fill(t("Next step: {step}"), { step: p.next_step })));
    c.append(box);
  }
  return c;
}

function lessonText(x, current) {
  const who = [x.course, x.teacher].filter(Boolean).join(", ") || t("no course");
  if (current) {
    return fill(t("{who} ({role}), {state}: {elapsed} min done, {remaining} min left"),
      { who, role: x.role, state: x.state, elapsed: minutes(x.elapsed_s), remaining: minutes(x.remaining_s) });
  }
  return fill(t("Next: {who} at {start}"), { who, start: when(x.start) });
}

async function refresh() {
  let got;
  try {
    got = await getJSON("/page.json" + q());
  } catch (e) {
    $("overall").className = "badge fault";
    $("overall").textContent = t("the agent does not answer");
    return;
  }
  const v = got.doc;
  if (got.status !== 200) { $("overall").textContent = v.error || String(got.status); return; }
  if (lang === null) { await setLang(v.default_lang); return; }
  $("device").textContent = v.device.name ? `${v.device.name} (${v.device.id})` : v.device.id;
  $("meta").textContent = fill(t("school {school}, classroom-agent {version}, updated {time}"),
    { school: v.device.school, version: v.version, time: new Date().toLocaleTimeString(locale()) });
  $("overall").className = "badge " + v.overall;
  $("overall").textContent = { good: t("Healthy"), warning: t("Needs attention"), fault: t("Something does not work") }[v.overall];
  $("subsystems").replaceChildren(...v.subsystems.map(card));
  const cur = v.lesson.current, nxt = v.lesson.next;
  $("lesson-current").textContent = cur ? lessonText(cur, true) : t("No lesson running.");
  $("lesson-next").textContent = nxt ? lessonText(nxt, false) : t("No lesson planned.");
  const rows = v.events.map((e) => {
    const tr = el("tr", e.severity);
    tr.append(el("td", "", when(e.ts)), el("td", "", e.type), el("td", "", e.message));
    return tr;
  });
  $("events").tBodies[0].replaceChildren(...rows);
}

async function snapshot() {
  const b = $("snapshot-button");
  b.disabled = true;
  $("snapshot-info").textContent = t("Taking a snapshot…");
  try {
    const { doc } = await getJSON("/snapshot.json" + q(), true);
    showSnapshot(doc);
  } finally {
    b.disabled = false;
  }
}

function showSnapshot(doc) {
  lastSnapshot = doc;
  const img = $("snapshot");
  if (doc.jpeg) {
    if (img.src !== "data:image/jpeg;base64," + doc.jpeg) img.src = "data:image/jpeg;base64," + doc.jpeg;
    img.hidden = false;
    $("snapshot-info").textContent = fill(t("{width}x{height}, brightness {luma} of 255, taken {time}"),
      { width: doc.width, height: doc.height, luma: Math.round(doc.luma), time: new Date(doc.taken_at * 1000).toLocaleTimeString(locale()) });
  } else {
    img.hidden = true;
    $("snapshot-info").textContent = doc.error || t("no picture");
  }
}

function showLevel(doc) {
  lastLevel = doc;
  const db = typeof doc.rms_dbfs === "number" ? doc.rms_dbfs : null;
  const bar = $("level-bar");
  const pct = db === null ? 0 : Math.max(0, Math.min(100, (db + 60) / 60 * 100));
  bar.style.width = pct.toFixed(1) + "%";
  bar.dataset.dbfs = db === null ? "" : String(db);
  if (doc.error) $("level-value").textContent = doc.error;
  else if (db === null) $("level-value").textContent = t("Opening the microphone…");
  else $("level-value").textContent = fill(t("{db} dBFS (peak {peak} dBFS)"), { db: db.toFixed(0), peak: Math.round(doc.peak_dbfs) });
  if (doc.listening === false) stopListening();
}

async function pollLevel() {
  try {
    const { status, doc } = await getJSON("/level.json" + q(), true);
    showLevel(doc);
    if (status === 403) stopListening();  // no key: asking again will not help
  } catch (e) { stopListening(); }
}

function stopListening() {
  if (levelTimer) clearInterval(levelTimer);
  levelTimer = null;
  $("level-button").textContent = t("Listen");
}

function toggleLevel() {
  if (levelTimer) { stopListening(); return; }
  levelTimer = setInterval(pollLevel, LEVEL_MS);
  $("level-button").textContent = t("Stop listening");
  pollLevel();
}

document.addEventListener("DOMContentLoaded", () => {
  for (const b of document.querySelectorAll("button[data-lang]")) {
    b.addEventListener("click", () => setLang(b.dataset.lang));
  }
  $("snapshot-button").addEventListener("click", snapshot);
  $("level-button").addEventListener("click", toggleLevel);
  let saved = null;
  try { saved = localStorage.getItem("classroom-agent-lang"); } catch (e) { /* ignore */ }
  const asked = new URLSearchParams(location.search).get("lang");
  const pick = asked || saved;
  if (pick) setLang(pick.startsWith("zh") ? "zh_CN" : "en"); else refresh();
  setInterval(refresh, POLL_MS);
});
