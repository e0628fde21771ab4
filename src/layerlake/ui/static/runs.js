// layerlake UI, the runs pages: the runs table, a run's page (live while it runs), a sweep's view.
// Data is inserted as text, never as markup.
import { cell, chart, getJson, run, say, show, table } from "./app.js";

const page = document.body.dataset.page;
const MAX_ADDRESS = 4000;  // the longest /compare?runs=... address made; more runs go by session storage
const POLL_MS = 2000;  // how often a live page asks whether the warehouse changed (a cheap answer)

function element(tag, text, className) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (className) e.className = className;
  return e;
}

function link(href, text) {
  const a = element("a", text);
  a.href = href;
  return a;
}

// a number to four significant digits (0.5, 3.871, 1e-5), a time to the second, a duration in words
function fmt(value, column) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") {
    if (column === "duration_s") return duration(value);
    return Number.isInteger(value) ? String(value) : String(Number(value.toPrecision(4)));
  }
  if (typeof value === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d/.test(value)) {
    return value.slice(0, 19).replace("T", " ") + (value.endsWith("+00:00") ? " UTC" : "");
  }
  return cell(value);
}

function duration(seconds) {
  if (seconds < 60) return seconds.toFixed(seconds < 10 ? 1 : 0) + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.round((seconds % 3600) / 60) + " min";
}

function grid(columns, rows) {  // table() with fmt's cells
  const t = table(columns, []);
  const body = t.tBodies[0];
  for (const row of rows) {
    const tr = body.insertRow();
    for (const c of columns) tr.insertCell().textContent = fmt(row[c], c);
  }
  return t;
}

function statusBadge(status) {
  return element("span", status === "running" ? "● running" : status, "badge " + status);
}

// --- the runs table -----------------------------------------------------------------------------------

const tableState = { sort: "", desc: false, hidden: null, selected: new Set(), data: null };

function storedHidden(columns, hiddenByDefault) {
  try {
    const saved = JSON.parse(localStorage.getItem("layerlake.runs.hidden"));
    if (Array.isArray(saved)) return new Set(saved);
  } catch (e) { /* nothing saved */ }
  return new Set(hiddenByDefault);
}

function columnChooser(columns) {
  const list = document.getElementById("column-list");
  list.replaceChildren();
  for (const c of columns) {
    const label = element("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = c;
    box.checked = !tableState.hidden.has(c);
    box.onchange = () => {
      if (box.checked) tableState.hidden.delete(c); else tableState.hidden.add(c);
      localStorage.setItem("layerlake.runs.hidden", JSON.stringify([...tableState.hidden]));
      drawRuns();
    };
    label.append(box, " " + c);
    list.appendChild(label);
  }
}

function drawRuns() {
  const data = tableState.data;
  const shown = data.columns.filter((c) => !tableState.hidden.has(c));
  const t = document.createElement("table");
  t.id = "runs";
  const head = t.createTHead().insertRow();
  head.appendChild(element("th", "✓"));
  for (const c of shown) {
    const th = element("th", c + (tableState.sort === c ? (tableState.desc ? " ▼" : " ▲") : ""));
    th.className = "sortable";
    th.dataset.column = c;
    th.title = "sort by " + c;
    th.onclick = () => {
      tableState.desc = tableState.sort === c ? !tableState.desc : false;
      tableState.sort = c;
      run(loadRuns);
    };
    head.appendChild(th);
  }
  const body = t.createTBody();
  for (const r of data.rows) {
    const tr = body.insertRow();
    tr.dataset.run = r.run_id;
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = r.run_id;
    box.checked = tableState.selected.has(r.run_id);
    box.onchange = () => { if (box.checked) tableState.selected.add(r.run_id); else tableState.selected.delete(r.run_id); };
    tr.insertCell().appendChild(box);
    for (const c of shown) {
      const td = tr.insertCell();
      if (c === "run_id") td.appendChild(link("/run?id=" + encodeURIComponent(r.run_id), r.run_id));
      else if (c === "status") td.appendChild(statusBadge(r.status));
      else if (c === "sweep_dir" && r.sweep_dir) td.appendChild(link("/sweep?dir=" + encodeURIComponent(r.sweep_dir), r.sweep_dir));
      else td.textContent = fmt(r[c], c);
    }
  }
  show("table", t);
  const shared = Object.entries(data.shared);
  document.getElementById("shared").textContent = shared.length
    ? "the same in every run: " + shared.map(([k, v]) => k + "=" + fmt(v, k)).join(", ") : "";
}

async function loadRuns() {
  const search = document.getElementById("search").value;
  const filter = document.getElementById("filter").value;
  const params = new URLSearchParams({ search, filter, sort: tableState.sort, desc: tableState.desc ? "1" : "0" });
  const query = new URLSearchParams();  // the page's address keeps the search, so it can be shared
  if (search) query.set("search", search);
  if (filter) query.set("filter", filter);
  history.replaceState(null, "", "/runs" + (query.toString() ? "?" + query : ""));
  const data = await getJson("/api/runs_table?" + params);
  const first = tableState.data === null;
  tableState.data = data;
  if (first) {
    tableState.hidden = storedHidden(data.columns, data.hidden);
    columnChooser(data.columns);
  }
  drawRuns();
  say(data.rows.length + " of " + data.total + " runs");
}

function runsTablePage() {
  const given = new URLSearchParams(window.location.search);
  document.getElementById("search").value = given.get("search") || "";
  document.getElementById("filter").value = given.get("filter") || "";
  let timer = null;
  const later = () => { clearTimeout(timer); timer = setTimeout(() => run(loadRuns), 250); };
  document.getElementById("search").oninput = later;
  document.getElementById("filter").oninput = later;
  document.getElementById("runs-filter").onsubmit = (e) => { e.preventDefault(); run(loadRuns); };
  document.getElementById("compare").onclick = () => {
    const chosen = [...tableState.selected];
    if (chosen.length === 0) { say("tick the runs to compare", true); return; }
    const address = "/compare?runs=" + encodeURIComponent(chosen.join(","));
    if (address.length <= MAX_ADDRESS) { window.location.href = address; return; }
    sessionStorage.setItem("layerlake.compare", JSON.stringify(chosen));  // too many for an address
    window.location.href = "/compare?from=runs";
  };
  run(loadRuns);
}

// --- one run ------------------------------------------------------------------------------------------

const runState = { id: null, logged: [], thinned: [], lastStep: null, snapshots: [], version: null, status: null };
const LOGGED_KEPT = 30000;  // values a live page holds before it asks for the run's values thinned again

function facts(r) {
  const rows = [
    ["status", r.status], ["kind", r.kind], ["suite / model", r.suite + " / " + r.model], ["seed", r.seed],
    ["started", r.started_at], ["ended", r.ended_at], ["host", r.host + (r.pid ? " (pid " + r.pid + ")" : "")],
    ["git commit", r.git_commit ? r.git_commit + (r.git_dirty ? " (dirty: uncommitted changes)" : " (clean)") : null],
    ["hydra job", r.job_num !== null && r.job_num !== undefined ? "job " + r.job_num + " of " + r.sweep_dir : null],
    ["probe", r.probe_id], ["layerlake", r.code_version], ["error", r.error],
  ];
  const t = document.createElement("table");
  const body = t.createTBody();
  for (const [k, v] of rows) {
    if (v === null || v === undefined || v === "") continue;
    const tr = body.insertRow();
    tr.appendChild(element("th", k));
    const td = tr.insertCell();
    if (k === "hydra job") td.appendChild(link("/sweep?dir=" + encodeURIComponent(r.sweep_dir), v));
    else td.textContent = fmt(v, k);
    if (k === "error") td.className = "error";
  }
  return t;
}

function drawBadge() {
  const badge = document.getElementById("badge");
  badge.replaceChildren(statusBadge(runState.status));
  if (runState.status === "running") badge.append(" updates as the run commits");
}

function drawSnapshots() {
  const columns = ["step", ...new Set(runState.snapshots.flatMap((s) => Object.keys(s).filter((k) => k !== "step")))];
  show("snapshots", runState.snapshots.length ? grid(columns, runState.snapshots) : element("p", "no snapshots"));
}

function thinnedNote(thinned) {
  // a series with more values than a page draws comes thinned (evenly by step, its first, last, lowest and
  // highest values kept): the page says so, per series
  return thinned.map((t) => t.name + ": " + t.shown.toLocaleString("en") + " of " + t.stored.toLocaleString("en"))
    .join("; ");
}

async function drawLogged() {
  const note = thinnedNote(runState.thinned);
  document.getElementById("logged-note").textContent = note
    ? "thinned to draw (evenly spaced by step; the first, last, lowest and highest values kept): " + note : "";
  if (runState.logged.length === 0) { show("logged", element("p", "nothing logged")); return; }
  const spec = runState.loggedSpec;
  spec.data.values = runState.logged;
  await chart("logged", spec);
}

async function drawFigures() {
  const data = await getJson("/api/run_figures?" + new URLSearchParams({ id: runState.id }));
  for (const key of ["cka", "ranks"]) {
    if (data[key]) await chart(key, data[key]);
    else show(key, element("p", "nothing to draw yet (needs snapshots with sketches and spectra)", "hint"));
  }
}

async function runPage() {
  runState.id = document.getElementById("run-page").dataset.run;
  const data = await getJson("/api/run?" + new URLSearchParams({ id: runState.id }));
  Object.assign(runState, {
    logged: data.logged, thinned: data.thinned, lastStep: data.last_step, snapshots: data.snapshots,
    version: data.version, status: data.run.status, loggedSpec: data.logged_chart,
  });
  drawBadge();
  show("facts", facts(data.run));
  show("tags", data.tags.length ? grid(["key", "value", "tagged_at"], data.tags) : element("p", "no tags (layerlake runs tag RUN key=value)", "hint"));
  show("notes", data.notes.length ? grid(["note", "noted_at"], data.notes) : element("p", "no notes (layerlake runs note RUN \"text\")", "hint"));
  const config = Object.entries(data.config).map(([key, value]) => ({ key, value }));
  show("config", grid(["key", "value"], config));
  show("overrides", element("pre", (data.run.overrides || []).join("\n") || "(none)"));
  drawSnapshots();
  await drawLogged();
  say(runState.logged.length + " logged values, " + runState.snapshots.length + " snapshots");
  await drawFigures();
  setTimeout(poll, POLL_MS);
}

async function poll() {
  try {
    const { version } = await getJson("/api/version");
    if (version !== runState.version) await update(version);
  } catch (e) {
    say(e.message, true);
  }
  if (runState.status === "running") setTimeout(poll, POLL_MS);
  else setTimeout(poll, POLL_MS * 5);  // a finished run rarely changes (a tag, a resume): ask less often
}

async function update(version) {
  // only what changed: the values logged after the last step shown, the snapshots if there are more
  const params = { id: runState.id, snapshots: runState.snapshots.length };
  if (runState.lastStep !== null) params.after = runState.lastStep;
  const data = await getJson("/api/run_updates?" + new URLSearchParams(params));
  runState.version = version;
  runState.status = data.status;
  drawBadge();
  if (data.thinned.length || runState.logged.length + data.logged.length > LOGGED_KEPT) {
    await reloadLogged();  // too many to add: every series again, each thinned to its share
  } else if (data.logged.length) {
    runState.logged = runState.logged.concat(data.logged);
    runState.lastStep = data.logged.reduce((m, r) => Math.max(m, r.step), runState.lastStep ?? -Infinity);
    if (!runState.loggedSpec) {  // the first values of a run that had logged none: the figure once
      runState.loggedSpec = (await getJson("/api/run?" + new URLSearchParams({ id: runState.id }))).logged_chart;
    }
    await drawLogged();
  }
  if (data.snapshots) {
    runState.snapshots = data.snapshots;
    drawSnapshots();
    await drawFigures();
  }
  say(runState.logged.length + " logged values, " + runState.snapshots.length + " snapshots" +
      (runState.status === "running" ? " (live)" : ""));
}

async function reloadLogged() {
  const data = await getJson("/api/run?" + new URLSearchParams({ id: runState.id }));
  Object.assign(runState, { logged: data.logged, thinned: data.thinned, lastStep: data.last_step });
  runState.loggedSpec = runState.loggedSpec || data.logged_chart;
  await drawLogged();
}

// --- a sweep ------------------------------------------------------------------------------------------

async function sweepPage(first) {
  const dir = document.getElementById("sweep-dir");
  const outcome = document.getElementById("outcome");
  const params = new URLSearchParams();
  const given = new URLSearchParams(window.location.search);
  const chosenDir = first ? given.get("dir") || "" : dir.value;
  const chosenOutcome = first ? given.get("outcome") || "" : outcome.value;
  if (chosenDir) params.set("dir", chosenDir);
  if (chosenOutcome) params.set("outcome", chosenOutcome);
  say("loading ...");
  const data = await getJson("/api/sweep?" + params);
  if (first) {
    for (const s of data.sweeps) {
      const option = element("option", s.sweep_dir + " (" + s.runs + " runs)");
      option.value = s.sweep_dir;
      dir.appendChild(option);
    }
    for (const [name, words] of Object.entries(data.outcomes)) {
      const option = element("option", words);
      option.value = name;
      outcome.appendChild(option);
    }
  }
  if (data.sweeps.length === 0) { say("no runs of a Hydra multirun in this warehouse"); return; }
  dir.value = data.sweep_dir;
  outcome.value = data.outcome;
  history.replaceState(null, "", "/sweep?" + new URLSearchParams({ dir: data.sweep_dir, outcome: data.outcome }));
  const columns = ["run_id", "job_num", "status", ...data.keys, data.outcome];
  const t = grid(columns, data.rows);
  for (const tr of t.tBodies[0].rows) {
    const id = tr.cells[0].textContent;
    tr.cells[0].replaceChildren(link("/run?id=" + encodeURIComponent(id), id));
  }
  show("result", t);
  await chart("chart", data.chart);
  const missing = data.rows.filter((r) => r[data.outcome] === null || r[data.outcome] === undefined).length;
  say(data.rows.length + " runs, " + data.keys.length + " swept values" + (missing ? "; " + missing + " runs without the outcome" : ""));
}

if (page === "runs_table") runsTablePage();
if (page === "run") run(runPage);
if (page === "sweep") {
  document.getElementById("sweep-form").onchange = () => run(() => sweepPage(false));
  run(() => sweepPage(true));
}
