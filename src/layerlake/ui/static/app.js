// layerlake UI: fetch the JSON endpoints and fill the page. Data is inserted as text, never as markup.
const page = document.body.dataset.page;
const status = document.getElementById("status");

export function say(text, isError) {
  status.textContent = text;
  status.className = isError ? "error" : "status";
}

// GET url; with fields, POST them as a form (a SQL statement or a list of runs too long for an address)
export async function getJson(url, fields) {
  const response = await (fields ? fetch(url, { method: "POST", body: new URLSearchParams(fields) }) : fetch(url));
  const text = await response.text();
  let data;
  try {
    data = JSON.parse(text);
  } catch (e) {
    throw new Error("the server answered " + response.status + " " + response.statusText + ", not JSON: " +
                    text.slice(0, 200) + "\nfix: reload the page; if it persists, report it");
  }
  if (!response.ok) throw new Error(data.error + (data.fix ? "\nfix: " + data.fix : ""));
  return data;
}

export function cell(value) {
  if (value === null || value === undefined) return "";
  if (typeof value === "number") return Number.isInteger(value) ? String(value) : value.toPrecision(6);
  if (Array.isArray(value)) return "[" + value.length + " values]";
  if (typeof value === "object") return JSON.stringify(value);  // a STRUCT or MAP: its fields
  return String(value);
}

export function table(columns, rows) {
  const element = document.createElement("table");
  const head = element.createTHead().insertRow();
  for (const c of columns) { const th = document.createElement("th"); th.textContent = c; head.appendChild(th); }
  const body = element.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    for (const c of columns) tr.insertCell().textContent = cell(row[c]);
  }
  return element;
}

export function show(id, element) {
  const target = document.getElementById(id);
  target.replaceChildren(element);
}

export async function chart(id, spec) {
  const target = document.getElementById(id);
  if (!spec) { target.textContent = "(nothing to draw)"; return; }
  // SVG: the figure's words (title, axis labels, panels) are text a reader can select and find; a large
  // figure on a canvas, which draws many thousands of marks faster
  const renderer = spec.data && spec.data.values.length > 5000 ? "canvas" : "svg";
  await window.vegaEmbed(target, spec, { renderer, actions: { export: true, source: false, compiled: false, editor: false } });
}

async function overview() {
  const data = await getJson("/api/overview");
  show("counts", table(["what", "value", "rows"], data.counts));
  show("models", table(["suite", "model", "steps", "first_step", "last_step", "runs"], data.models));
  show("runs", table(["run_id", "suite", "model", "kind", "status", "seed", "started_at", "ended_at"], data.runs));
  await chart("chart", data.loss_chart);
  say(data.runs.length + " runs");
}

async function sql(pageNumber) {
  const q = document.getElementById("q").value;
  say("running ...");
  const data = await getJson("/api/sql", { q, page: pageNumber });
  show("result", table(data.columns, data.rows));
  const pager = document.getElementById("pager");
  pager.replaceChildren();
  const last = Math.max(0, Math.ceil(data.total / data.page_rows) - 1);
  for (const [label, target] of [["previous", data.page - 1], ["next", data.page + 1]]) {
    if (target < 0 || target > last) continue;
    const button = document.createElement("button");
    button.textContent = label;
    button.onclick = () => sql(target).catch((e) => say(e.message, true));
    pager.appendChild(button);
  }
  say(data.total + " rows; page " + (data.page + 1) + " of " + (last + 1) + (data.cut ? "\n" + data.cut : ""));
}

let panelPage = 0;  // which page of a figure's panels is drawn (the panels that fit the window)
let fitColumns = 0;  // the most panels across (0: as many as the server reckons fit the width)

function windowFields() {
  // the figure is drawn to fit the chart's width and the window's height; more panels go on other pages
  const width = document.getElementById("chart").clientWidth || window.innerWidth;
  return { fit_width: Math.round(width), fit_height: window.innerHeight, panel_page: panelPage, fit_columns: fitColumns };
}

function overflows(chartSpec) {
  // a figure drawn wider than its box (long legends, axis titles): the columns to ask for instead, or 0
  const box = document.getElementById("chart");
  const figure = box.querySelector("svg, canvas");
  const columns = chartSpec && chartSpec.usermeta ? chartSpec.usermeta.columns : 1;
  if (!figure || columns < 2 || figure.getBoundingClientRect().right <= box.getBoundingClientRect().right + 1) return 0;
  return columns - 1;
}

function panelPager(form, chartSpec) {
  const pager = document.getElementById("panel-pager");
  pager.replaceChildren();
  const paging = chartSpec && chartSpec.usermeta && chartSpec.usermeta.paging;
  if (!paging || paging.pages < 2) return;
  for (const [label, target] of [["previous panels", paging.page - 1], ["next panels", paging.page + 1]]) {
    const button = document.createElement("button");
    button.textContent = label;
    button.disabled = target < 0 || target >= paging.pages;
    button.onclick = () => { panelPage = target; run(() => recipe(form)); };  // same columns
    pager.appendChild(button);
  }
  const text = document.createElement("span");
  text.textContent = " panels " + paging.first + "-" + paging.last + " of " + paging.panels +
    " (page " + (paging.page + 1) + " of " + paging.pages + ")";
  pager.appendChild(text);
}

async function recipe(form) {
  const params = new URLSearchParams({ name: form.dataset.recipe });
  const values = {};  // a multiple select gives several values: one comma-separated list
  for (const [k, v] of new FormData(form)) if (v !== "") (values[k] = values[k] || []).push(v);
  for (const [k, v] of Object.entries(values)) params.append(k, v.join(","));
  const downloadParams = new URLSearchParams(params);  // a download holds every row, whatever is drawn
  for (const [k, v] of Object.entries(windowFields())) params.append(k, v);
  say("running ...");
  const data = await getJson("/api/recipe?" + params);
  show("result", table(data.columns, data.rows));
  const downloads = document.getElementById("downloads");
  downloads.replaceChildren();
  for (const format of ["csv", "parquet"]) {
    const link = document.createElement("a");
    link.href = "/api/recipe?" + downloadParams + "&format=" + format;
    link.textContent = "download " + format;
    link.style.marginRight = "12px";
    downloads.appendChild(link);
  }
  await chart("chart", data.chart);
  const fewer = overflows(data.chart);
  if (fewer) { fitColumns = fewer; panelPage = 0; return recipe(form); }  // one column fewer, until it fits
  panelPager(form, data.chart);
  say(data.total + " rows" + (data.total > data.rows.length ? " (first " + data.rows.length + " shown)" : ""));
}

function chosenRuns() {
  // /compare?runs=a,b picks them; the runs table hands over a long choice in this tab's session storage
  const given = new URLSearchParams(window.location.search);
  if (given.get("from") === "runs") {
    try { return JSON.parse(sessionStorage.getItem("layerlake.compare")); } catch (e) { return null; }
  }
  return given.get("runs") ? given.get("runs").split(",") : null;
}

async function runsPage() {
  const data = await getJson("/api/runs");
  const chosen = chosenRuns();
  const list = document.getElementById("run-list");
  list.replaceChildren();
  for (const r of data.runs) {
    const label = document.createElement("label");
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = r.run_id;
    box.checked = chosen ? chosen.includes(r.run_id) : r.scalars > 0;  // /compare?runs=a,b picks them
    label.append(box, " " + r.run_id + " (" + r.model + ", " + r.status + ", " + r.scalars + " logged values)");
    list.appendChild(label);
  }
  const select = document.getElementById("scalar");
  for (const name of data.scalar_names) {
    const option = document.createElement("option");
    option.textContent = name;
    option.selected = name === "loss";
    select.appendChild(option);
  }
  say(data.runs.length + " runs");
}

async function compare(first) {
  const runs = [...document.querySelectorAll("#run-list input:checked")].map((b) => b.value);
  const name = document.getElementById("scalar").value;
  if (first && (runs.length === 0 || !name)) {  // an empty state, not an error: nothing to overlay yet
    show("chart", Object.assign(document.createElement("p"), { className: "hint", textContent: name
      ? "no run chosen: tick the runs to compare, then compare"
      : "nothing logged yet: a run's values appear here once it logs them (run.log(step, loss=...))" }));
    say(document.querySelectorAll("#run-list input").length + " runs");
    return;
  }
  say("loading ...");
  const data = await getJson("/api/scalars", { runs: runs.join(","), name });
  await chart("chart", data.chart);
  say(runs.length + " runs compared; " + data.rows.length + " values of " + name);
}

export function run(task) { task().catch((e) => say(e.message, true)); }

if (page === "overview") run(overview);
if (page === "runs") {
  document.getElementById("runs-form").onsubmit = (e) => { e.preventDefault(); run(compare); };
  run(async () => { await runsPage(); await compare(true); });
}
if (page === "sql") {
  document.getElementById("sql-form").onsubmit = (e) => { e.preventDefault(); run(() => sql(0)); };
  run(() => sql(0));
}
function applyScope(form) {
  // the chosen model's own layers, sites, steps ...: the other models' values are not offered
  const scoped = JSON.parse(form.dataset.scoped || "{}");
  const model = form.elements.model ? form.elements.model.value : "";
  for (const [name, byModel] of Object.entries(scoped)) {
    const select = form.elements[name];
    if (!select || select.tagName !== "SELECT" || !byModel[model]) continue;
    const current = [...select.selectedOptions].map((o) => o.value);
    const blank = [...select.options].find((o) => o.value === "");
    select.replaceChildren(...(blank ? [blank] : []));
    for (const value of byModel[model]) {
      const option = document.createElement("option");
      option.textContent = value;
      option.selected = current.includes(value);
      select.appendChild(option);
    }
  }
}

if (page === "recipe") {
  const form = document.getElementById("recipe-form");
  const given = new URLSearchParams(window.location.search);  // a link may fill the form: ?name=R&model=m
  for (const element of form.elements) {
    if (!element.name || !given.has(element.name)) continue;
    if (element.multiple) {
      const wanted = given.get(element.name).split(",");
      for (const option of element.options) option.selected = wanted.includes(option.value);
    } else element.value = given.get(element.name);
    if (element.name === "model") applyScope(form);
  }
  form.onsubmit = (e) => { e.preventDefault(); panelPage = 0; fitColumns = 0; run(() => recipe(form)); };
  form.onchange = (e) => {  // a changed selection draws again
    if (e.target.name === "model") applyScope(form);
    panelPage = 0;
    fitColumns = 0;
    run(() => recipe(form));
  };
  let resized = null;  // a resized window draws the figure again to fit, once the resizing stops
  window.addEventListener("resize", () => {
    clearTimeout(resized);
    resized = setTimeout(() => { fitColumns = 0; run(() => recipe(form)); }, 400);
  });
  if (form.dataset.empty) {  // nothing stored that this page draws: say so calmly, ask nothing
    show("chart", Object.assign(document.createElement("p"), { className: "hint", textContent: form.dataset.empty }));
    say("nothing to draw yet");
  } else run(() => recipe(form));
}
