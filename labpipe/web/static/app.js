// labpipe-web: the page. One WebSocket to the web server; each notifier kept as a
// local copy (the master's mods applied as they come) and each page re-drawn from it.
"use strict";
const state = {models: {}, ws: null, nextId: 1, pending: {}, selected: null, plotKey: null, log: [], console: []};
const $ = (id) => document.getElementById(id);
const el = (tag, attrs = {}, ...kids) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith("on")) e.addEventListener(k.slice(2), v); else e.setAttribute(k, v);
  }
  for (const k of kids) e.append(k);
  return e;
};
const say = (text) => { $("message").textContent = text; };

// --- the connection -----------------------------------------------------------------
function connect() {
  const ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
  state.ws = ws;
  ws.onmessage = (e) => handle(JSON.parse(e.data));
  ws.onclose = () => {
    // calls in flight get no answer now
    for (const p of Object.values(state.pending)) p.reject(new Error("the connection to the web server was lost"));
    state.pending = {};
    showConnection(false, "web server lost; reconnecting…"); setTimeout(connect, 500);
  };
}
function rpc(target, method, args = [], kwargs = {}) {
  const id = state.nextId++;
  // the lock's key, when one is typed, goes with every call (the master's gate takes it)
  const key = $("lock-key").value;
  if (key && !("lock_key" in kwargs)) kwargs = {...kwargs, lock_key: key};
  if (!state.ws || state.ws.readyState !== WebSocket.OPEN) return Promise.reject(new Error("not connected to the web server"));
  state.ws.send(JSON.stringify({type: "rpc", id, target, method, args, kwargs}));
  return new Promise((resolve, reject) => { state.pending[id] = {resolve, reject}; });
}
function showConnection(up, text) {
  const c = $("conn");
  c.className = up ? "up" : "down";
  c.dataset.connected = String(up);
  c.textContent = text;
}
function applyMod(target, mod) {
  let t = target;
  for (const k of mod.path) t = t[k];
  if (mod.action === "setitem") t[mod.key] = mod.value;
  else if (mod.action === "delitem") delete t[mod.key];
  else if (mod.action === "append") t.push(mod.x);
  else if (mod.action === "insert") t.splice(mod.i, 0, mod.x);
  else if (mod.action === "pop") t.splice(mod.i, 1);
}
function handle(msg) {
  if (msg.type === "reply") {
    const p = state.pending[msg.id]; delete state.pending[msg.id];
    if (p) { if (msg.ok) p.resolve(msg.result); else p.reject(new Error(msg.error)); }
  } else if (msg.type === "error") say(msg.error);
  else if (msg.type === "connection") {
    if (msg.name) { $("master-name").textContent = msg.name; document.title = msg.name + " · labpipe"; }
    showConnection(msg.connected, msg.connected ? "connected" : "master lost; reconnecting…");
  } else if (msg.type === "init") { state.models[msg.notifier] = msg.struct; redraw(msg.notifier, null); }
  else if (msg.type === "mod") {
    const m = state.models[msg.notifier];
    if (m !== undefined) { applyMod(m, msg.mod); redraw(msg.notifier, msg.mod); }
  } else if (msg.type === "log") addLog(msg.record);
  else if (msg.type === "console") addConsole(msg.message);
}
const redrawers = {};
function redraw(name, mod) { const f = redrawers[name]; if (f) f(mod); }

// --- pages --------------------------------------------------------------------------
function showPage(name) {
  for (const p of document.querySelectorAll(".page")) p.classList.toggle("shown", p.id === "page-" + name);
  location.hash = name;
}
for (const b of document.querySelectorAll("nav button")) b.onclick = () => showPage(b.dataset.page);
showPage(location.hash.slice(1) || "schedule");

// --- explorer -----------------------------------------------------------------------
redrawers.explist = () => {
  const ul = $("explist"); ul.replaceChildren();
  const names = Object.keys(state.models.explist || {}).sort();
  const folders = {};
  for (const name of names) {
    const parts = name.split("/"); const leaf = parts.pop();
    let parent = ul, path = "";
    for (const part of parts) {
      path += part + "/";
      if (!folders[path]) { const sub = el("ul", {class: "tree"}); parent.append(el("li", {}, part + "/", sub)); folders[path] = sub; }
      parent = folders[path];
    }
    parent.append(el("li", {class: "exp", "data-exp": name, onclick: () => selectExp(name)}, leaf));
  }
};
// a Git repository's current revision ("N/A": a plain folder, or Git without commits)
function curRev() {
  const rev = (state.models.explist_status || {}).cur_rev;
  return rev && rev !== "N/A" ? rev : null;
}
redrawers.explist_status = () => {
  const box = $("sub-rev-box"); const rev = curRev();
  if (box) { box.hidden = !rev; $("sub-rev").placeholder = rev ? "current: " + rev.slice(0, 12) : ""; }
};
// the arguments' table of an experiment description (explist's entry, or examine's)
function argsTable(exp) {
  const table = el("table", {id: "exp-args"});
  for (const [arg, desc] of Object.entries(exp.arginfo || {})) {
    // arginfo: {name: [procdesc, group, tooltip]}; the tooltip (a plan's "a device
    // (device_db key)") is shown beside the editor
    const tip = Array.isArray(desc) && desc[2] ? desc[2] : "";
    table.append(el("tr", {title: tip}, el("td", {}, arg), el("td", {}, argEditor(arg, desc)), el("td", {class: "tip"}, tip)));
  }
  return table;
}
function selectExp(name) {
  state.selected = name;
  const exp = state.models.explist[name]; const form = $("exp-form"); form.replaceChildren();
  form.append(el("h3", {}, name + " (" + exp.class_name + ")"));
  form.append(argsTable(exp));
  const sd = exp.scheduler_defaults || {};
  // a Git repository: the revision to run at (empty: the current one, resolved by the
  // master at submission); "Load arguments" examines the file at that revision
  const rev = curRev();
  const revBox = el("span", {id: "sub-rev-box"}, " revision ",
    el("input", {id: "sub-rev", size: 16, placeholder: rev ? "current: " + rev.slice(0, 12) : ""}), " ",
    el("button", {id: "rev-load", onclick: () => loadAtRevision(name)}, "Load arguments"));
  revBox.hidden = !rev;
  form.append(el("p", {}, "pipeline ", el("input", {id: "sub-pipeline", value: sd.pipeline_name || "main"}),
    " priority ", el("input", {id: "sub-priority", type: "number", value: sd.priority || 0}),
    " due ", el("input", {id: "sub-due", type: "datetime-local"}),
    " flush ", el("input", {id: "sub-flush", type: "checkbox"}), revBox));
  form.append(el("button", {id: "validate", onclick: () => submit(true)}, "Validate"), " ",
              el("button", {id: "submit", onclick: () => submit(false)}, "Submit"), " ", el("span", {id: "sub-result"}));
}
// the arguments of the selected experiment as its file has them at the typed revision
async function loadAtRevision(name) {
  const exp = state.models.explist[name]; const out = $("sub-result"); out.dataset.ok = ""; out.dataset.loaded = "";
  const rev = $("sub-rev").value.trim() || null;
  try {
    const classes = await rpc("experiment_db", "examine", [exp.file, true, rev]);
    const desc = classes[exp.class_name];
    if (!desc) throw new Error(`no class ${exp.class_name} in ${exp.file} at revision ${rev || "current"}`);
    if (state.selected !== name) return;
    $("exp-args").replaceWith(argsTable(desc));
    out.textContent = "arguments of revision " + (rev || "current"); out.dataset.loaded = rev || "current";
  } catch (err) { out.textContent = err.message; out.dataset.ok = "false"; }
}
async function submit(dryRun) {
  const exp = state.models.explist[state.selected]; let args;
  const out = $("sub-result"); out.dataset.ok = ""; out.dataset.rid = "";
  try { args = readArgs($("exp-args")); } catch (err) { out.textContent = err.message; out.dataset.ok = "false"; return; }
  const rev = curRev() ? $("sub-rev").value.trim() : "";
  const expid = {file: exp.file, class_name: exp.class_name, arguments: args, log_level: 30, repo_rev: rev || null};
  const pipeline = $("sub-pipeline").value; const due = $("sub-due").value;
  try {
    if (dryRun) {
      const problems = await rpc("schedule", "validate", [pipeline, expid]);
      out.textContent = problems.length ? problems.join("; ") : "valid";
      out.dataset.ok = String(!problems.length);
    } else {
      const rid = await rpc("schedule", "submit", [pipeline, expid, Number($("sub-priority").value),
        due ? new Date(due).getTime() / 1000 : null, $("sub-flush").checked]);
      out.textContent = "RID " + rid; out.dataset.ok = "true"; out.dataset.rid = String(rid);
    }
  } catch (err) { out.textContent = err.message; out.dataset.ok = "false"; }
}

// --- schedule -----------------------------------------------------------------------
function act(p) { p.then(() => say(""), (err) => say(err.message)); }
// --- queue order (docs/queue-control.md): immediate first, higher priority, earlier due
// date (none earliest), lower queue_position, lower RID
const QUEUED = new Set(["pending", "flushing", "preparing", "prepare_done"]);
function precedence(a, b) {
  const [ra, x] = a, [rb, y] = b;
  return (!!y.immediate - !!x.immediate) || (y.priority - x.priority) || ((x.due_date || 0) - (y.due_date || 0))
    || ((x.queue_position ?? Number(ra)) - (y.queue_position ?? Number(rb))) || (ra - rb);
}
// {rid: place}: "now" for a run of execute_now, 1 for the next of its pipeline's queue...;
// each pipeline's queue in order, for the moves; and every run in the master's order
// (the rows' order, as the CLI's schedule table has it)
function queuePlaces(sched) {
  const order = Object.entries(sched).sort(precedence);
  const places = {}, queues = {};
  for (const [rid, r] of order) {
    if (r.immediate) { places[rid] = "now"; continue; }
    if (!QUEUED.has(r.status)) continue;
    const q = queues[r.pipeline] || (queues[r.pipeline] = []);
    q.push(rid); places[rid] = String(q.length);
  }
  return {places, queues, order: order.map(([rid]) => rid)};
}
let queue = {places: {}, queues: {}, order: []};
function move(rid, how) {
  const r = (state.models.schedule || {})[rid]; const q = queue.queues[r.pipeline] || []; const i = q.indexOf(rid);
  if (how === "up" && i > 0) return act(rpc("schedule", "move", [Number(rid)], {before: Number(q[i - 1])}));
  if (how === "down" && i >= 0 && i < q.length - 1) return act(rpc("schedule", "move", [Number(rid)], {after: Number(q[i + 1])}));
  if (how === "front" || how === "back") return act(rpc("schedule", "move", [Number(rid)], {pos: how}));
}
// text, and a ✎ button that replaces both by the editor makeEditor() returns
function editable(text, what, makeEditor) {
  const box = el("span", {}, text + " ");
  box.append(el("button", {class: "edit-" + what, title: "change the " + what, onclick: () => {
    const editor = makeEditor(); box.replaceChildren(editor); editor.focus();
  }}, "✎"));
  return box;
}
// a UNIX time as a datetime-local input's value (local time, to the minute)
function localInput(t) {
  const d = new Date(t * 1000), p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}
// the revision a run runs at (a Git repository's commit), short, the whole as its title
function revText(rev) {
  return rev && rev !== "N/A" ? [" @", el("span", {class: "rev", title: rev, "data-rev": rev}, rev.slice(0, 10))] : [];
}
function scheduleRow(rid, r) {
  const prog = r.progress && r.progress.total ? r.progress.done / r.progress.total : null;
  const eta = r.eta ? Math.max(0, Math.round(r.eta - Date.now() / 1000)) + " s" : "";
  const bar = el("span", {class: "bar"}, el("div", {style: "width:" + (prog === null ? 0 : Math.round(100 * prog)) + "px"}));
  const change = (fields) => act(rpc("schedule", "change", [Number(rid)], fields));
  const prio = el("input", {type: "number", size: 3, value: r.priority, onchange: (e) => change({priority: Number(e.target.value)})});
  // a pending run's pipeline and due date are edited in place: its ✎ button puts an
  // editor in the cell (editors in every row cost too much with 1,000 runs: a
  // datetime-local input is a tree of its own); an empty due date removes it
  const pending = r.status === "pending" && !r.immediate;
  const pipeline = pending
    ? editable(r.pipeline, "pipeline", () => el("input", {class: "pipeline-edit", value: r.pipeline, size: 8,
        onchange: (e) => change({pipeline_name: e.target.value})}))
    : r.pipeline;
  const dueText = r.due_date ? new Date(r.due_date * 1000).toLocaleString() : "";
  const due = pending
    ? editable(dueText, "due", () => el("input", {class: "due-edit", type: "datetime-local", value: r.due_date ? localInput(r.due_date) : "",
        onchange: (e) => change({due_date: e.target.value ? new Date(e.target.value).getTime() / 1000 : 0})}))
    : dueText;
  const blocked = (r.blocked_by || []).map((b) => b.rid).join(",");
  const moves = pending
    ? ["front", "up", "down", "back"].map((how) => el("button", {class: "move-" + how, title: "move " + how, onclick: () => move(rid, how)},
        {front: "⤒", up: "↑", down: "↓", back: "⤓"}[how]))
    : [];
  return el("div", {class: "run", "data-rid": rid, "data-status": r.status},
    el("span", {}, rid), el("span", {class: "place"}, el("span", {class: "n"}, queue.places[rid] || ""), ...moves), el("span", {class: "pipeline"}, pipeline), el("span", {class: "status"}, r.status), el("span", {}, prio),
    el("span", {class: "due"}, due),
    el("span", {class: "file"}, r.expid.file || "(content)", ...revText(r.expid.repo_rev)), el("span", {}, r.expid.class_name || ""),
    el("span", {}, bar, " " + eta), el("span", {}, blocked),
    el("span", {}, el("button", {class: "delete", onclick: () => act(rpc("schedule", "delete", [Number(rid)]))}, "Delete"), " ",
      el("button", {class: "terminate", onclick: () => act(rpc("schedule", "request_termination", [Number(rid)]))}, "Terminate")));
}
// The rows in the master's order. A mod redraws only the row of the run it touches (and
// puts it in its place: a mod changes one run's place, the others keep theirs); the whole schedule
// (its copy on connecting) is drawn in chunks, one a frame, the first screenful at once,
// so a schedule of thousands of runs shows without a long freeze. Rows are grid rows
// with content-visibility:auto (style.css): rows out of sight cost no layout (a table
// of 1,000 rows was laid out whole at every change).
const scheduleRows = new Map();
let undrawn = new Set();  // RIDs the chunked drawing has still to draw
let drawToken = 0;
const FIRST_CHUNK = 100, CHUNK = 250;
redrawers.schedule = (mod) => {
  if ($("pipelines").dataset.names !== pipelineNames().join(",")) redrawers.pipelines();
  const body = $("schedule-body"); const sched = state.models.schedule || {};
  const was = queue.places; queue = queuePlaces(sched);
  // a move changes the places of other runs: only their place cells are written again
  for (const rid of new Set([...Object.keys(was), ...Object.keys(queue.places)])) {
    const row = scheduleRows.get(rid);
    if (row && was[rid] !== queue.places[rid]) row.querySelector(".place .n").textContent = queue.places[rid] || "";
  }
  if (mod && (mod.path.length > 0 || mod.action === "setitem" || mod.action === "delitem")) {
    const rid = mod.path.length ? String(mod.path[0]) : String(mod.key);
    if (undrawn.has(rid)) { if (!(rid in sched)) undrawn.delete(rid); return; }  // drawn later as it is then
    const old = scheduleRows.get(rid);
    if (!(rid in sched)) { if (old) old.remove(); scheduleRows.delete(rid); return; }
    const row = scheduleRow(rid, sched[rid]);
    // in its place (while the chunks are drawn: at the end, ordered when they are done);
    // a row already there is replaced where it is
    const next = undrawn.size ? null : nextRow(rid);
    if (old && (undrawn.size || old.nextSibling === next)) old.replaceWith(row);
    else { if (old) old.remove(); body.insertBefore(row, next); }
    scheduleRows.set(rid, row);
    return;
  }
  const token = ++drawToken;
  // the chunks go before the sentinel; runs submitted meanwhile after it
  const sentinel = el("div", {class: "sentinel", hidden: ""});
  body.replaceChildren(sentinel); scheduleRows.clear();
  const rids = queue.order;
  undrawn = new Set(rids);
  let i = 0;
  const step = () => {
    if (token !== drawToken) return;
    const now = state.models.schedule || {};
    const part = document.createDocumentFragment();
    for (const end = Math.min(i + (i ? CHUNK : FIRST_CHUNK), rids.length); i < end; i++) {
      const rid = rids[i];
      if (!undrawn.delete(rid) || !(rid in now)) continue;
      const row = scheduleRow(rid, now[rid]);
      scheduleRows.set(rid, row); part.append(row);
    }
    body.insertBefore(part, sentinel);
    if (i < rids.length) requestAnimationFrame(step); else { sentinel.remove(); orderRows(); }
  };
  step();
};
// the row that follows run rid's in the master's order (null: the last)
function nextRow(rid) {
  const order = queue.order;
  for (let i = order.indexOf(rid) + 1; i < order.length; i++) {
    const row = scheduleRows.get(order[i]);
    if (row && row.isConnected) return row;
  }
  return null;
}
// every row in the master's order (once the chunks are drawn: runs submitted meanwhile
// went to the end)
function orderRows() {
  const body = $("schedule-body"); let prev = null;
  for (const rid of queue.order) {
    const row = scheduleRows.get(rid); if (!row) continue;
    const want = prev ? prev.nextSibling : body.firstChild;
    if (row !== want) body.insertBefore(row, want);
    prev = row;
  }
}
// every pipeline that has runs or a state, and main
function pipelineNames() {
  const names = new Set(["main", ...Object.keys(state.models.pipelines || {})]);
  for (const r of Object.values(state.models.schedule || {})) names.add(r.pipeline);
  return [...names].sort();
}
redrawers.pipelines = () => {
  const box = $("pipelines"); box.replaceChildren("Pipelines: ");
  const states = state.models.pipelines || {};
  for (const name of pipelineNames()) {
    const held = !!(states[name] && states[name].held);
    box.append(el("span", {"data-pipeline": name, "data-held": String(held)}, name + (held ? " (held) " : " "),
      el("button", {class: "hold", onclick: () => act(rpc("schedule", held ? "release" : "hold", [name]))}, held ? "Release" : "Hold"), " ",
      el("button", {class: "clear", onclick: () => {
        if (confirm(`Delete every run of ${name} that has not started running?`)) act(rpc("schedule", "clear", [name]));
      }}, "Clear"), " "));
  }
  box.dataset.names = pipelineNames().join(",");
};

// --- datasets -----------------------------------------------------------------------
// A mod redraws only the row of the dataset it touches, and the plot once per frame.
function datasetKey(mod) { return mod.path.length ? String(mod.path[0]) : String(mod.key); }
// a value as the table shows it: a long array by its first values and its length
function preview(value) {
  if (Array.isArray(value) && value.length > 20) {
    return "[" + value.slice(0, 8).map((v) => JSON.stringify(v)).join(",") + ",… (" + value.length + " values)]";
  }
  return JSON.stringify(value);
}
function datasetRow(k, entry) {
  const [persist, value, meta] = entry;
  const text = preview(value);
  return el("tr", {"data-key": k}, el("td", {}, k), el("td", {class: "value"}, text.length > 60 ? text.slice(0, 60) + "…" : text),
    el("td", {}, (meta && meta.unit) || ""), el("td", {}, persist ? "persist" : ""),
    el("td", {}, el("button", {class: "plot", onclick: () => { state.plotKey = k; drawPlotChoices(); plot(); }}, "Plot"), " ",
      el("button", {class: "delete", onclick: () => act(rpc("dataset_db", "delete", [k]))}, "Delete")));
}
let plotPending = false;
function plotSoon() {
  if (plotPending) return;
  plotPending = true;
  requestAnimationFrame(() => { plotPending = false; plot(); });
}
redrawers.datasets = (mod) => {
  const f = $("ds-filter").value; const body = $("datasets-body"); const ds = state.models.datasets || {};
  if (mod) {
    const k = datasetKey(mod);
    const old = body.querySelector(`tr[data-key="${CSS.escape(k)}"]`);
    const row = k in ds && k.includes(f) ? datasetRow(k, ds[k]) : null;
    if (old && row) old.replaceWith(row);
    else if (old) old.remove();
    else if (row) {
      const after = [...body.children].find((r) => r.dataset.key > k);
      body.insertBefore(row, after || null);
    }
    if (k === state.plotKey || k === $("plot-x").value) plotSoon();
    if (mod.action === "setitem" && mod.path.length === 0 && !(k in plotChoices)) drawPlotChoices();
    else if (mod.action === "delitem" && k in plotChoices) drawPlotChoices();
    return;
  }
  body.replaceChildren(...Object.keys(ds).sort().filter((k) => k.includes(f)).map((k) => datasetRow(k, ds[k])));
  drawPlotChoices();
  if (state.plotKey) plotSoon();
};
$("ds-filter").oninput = () => redrawers.datasets(null);
$("ds-set").onclick = () => {
  let v; try { v = JSON.parse($("ds-value").value); } catch (err) { say("bad value: " + err.message); return; }
  act(rpc("dataset_db", "set", [$("ds-key").value, v, $("ds-persist").checked]));
};
// the x axis: the index, or another 1-D dataset
// (drawn again only when a dataset comes or goes: a value set at 10 Hz would otherwise
// close the list under the user's pointer)
let plotChoices = {};
function drawPlotChoices() {
  const sel = $("plot-x"); const was = sel.value; const ds = state.models.datasets || {};
  plotChoices = Object.fromEntries(Object.keys(ds).map((k) => [k, true]));
  const keys = Object.keys(ds).filter((k) => k !== state.plotKey && isLine(ds[k][1])).sort();
  sel.replaceChildren(el("option", {value: ""}, "index"), ...keys.map((k) => el("option", {value: k}, k)));
  sel.value = keys.includes(was) ? was : "";
}
$("plot-x").onchange = () => plot();
function plot() {
  const ds = state.models.datasets || {}; const entry = ds[state.plotKey];
  if (!entry) return;
  const xk = $("plot-x").value; const x = xk && ds[xk] ? ds[xk][1] : null;
  $("plot-title").textContent = state.plotKey + (xk ? " vs " + xk : "");
  plotInto($("plot"), state.plotKey, entry[1], x, 600, 300, xk);
}

// --- log ----------------------------------------------------------------------------
// the log drawn at most once a frame, however fast records come
let logPending = false;
function addLog(record) {
  state.log.push(record); if (state.log.length > 5000) state.log.shift();
  if (!logPending) { logPending = true; requestAnimationFrame(() => { logPending = false; drawLog(); }); }
}
const LEVELS = {10: "DEBUG", 20: "INFO", 30: "WARNING", 40: "ERROR", 50: "CRITICAL"};
// a record of the log broadcast: [levelno, source, created, "logger:message"]
function logText(r) {
  if (Array.isArray(r) && r.length === 4) {
    return new Date(r[2] * 1000).toLocaleTimeString() + " " + (LEVELS[r[0]] || r[0]) + " " + r[1] + " " + r[3];
  }
  return typeof r === "string" ? r : JSON.stringify(r);
}
// runs' console lines (prints, stdout, stderr, log records as LEVEL:logger:message)
function addConsole(m) {
  for (const [t, text] of m.lines || []) {
    state.console.push("[RID " + m.rid + "] " + new Date(t * 1000).toLocaleTimeString() + " " + text);
  }
  if (state.console.length > 5000) state.console.splice(0, state.console.length - 5000);
  if (!logPending) { logPending = true; requestAnimationFrame(() => { logPending = false; drawLog(); }); }
}
function logLevel(r) { return Array.isArray(r) && typeof r[0] === "number" ? r[0] : 20; }
function drawLog() {
  const min = Number($("log-level").value); const q = $("log-search").value;
  $("log").textContent = state.log.filter((r) => logLevel(r) >= min && logText(r).includes(q)).map(logText).join("\n");
  $("log").scrollTop = $("log").scrollHeight;
  $("console").textContent = state.console.filter((line) => line.includes(q)).join("\n");
  $("console").scrollTop = $("console").scrollHeight;
}
$("log-level").onchange = drawLog; $("log-search").oninput = drawLog;

// --- history ------------------------------------------------------------------------
redrawers.history = () => {
  const h = state.models.history || {}; const body = $("history-body");
  body.replaceChildren(...Object.keys(h).sort((a, b) => b - a).slice(0, 500).map((rid) => {
    const r = h[rid];
    return el("tr", {"data-rid": rid, "data-status": r.status}, el("td", {}, rid), el("td", {}, r.status),
      el("td", {}, (r.expid && r.expid.file) || ""), el("td", {class: "rev"}, ...revText(r.repo_rev).slice(1)), el("td", {}, r.class_name || ""),
      el("td", {}, r.ended ? new Date(r.ended * 1000).toLocaleString() : ""), el("td", {class: "err"}, r.error || ""),
      el("td", {}, el("button", {class: "resubmit", onclick: () => act(rpc("history", "resubmit", [Number(rid)]))}, "Resubmit"),
        r.results ? el("button", {class: "open-results", onclick: () => openResults(Number(rid))}, "Results") : ""));
  }));
};
// a results file's datasets and archive: a table of values, each array plotted
async function openResults(rid) {
  const box = $("results"); box.replaceChildren("loading…"); box.dataset.rid = "";
  let res;
  try { res = await rpc("history", "read_results", [rid]); } catch (err) { box.replaceChildren(err.message); return; }
  box.replaceChildren(el("h3", {}, "Results of RID " + rid));
  for (const [group, values] of Object.entries(res)) {
    const table = el("table", {"data-group": group});
    for (const [k, v] of Object.entries(values).sort()) {
      const text = preview(v);
      const cell = el("div", {class: "small-plot"});
      table.append(el("tr", {"data-key": k}, el("td", {}, k),
        el("td", {class: "value"}, text.length > 80 ? text.slice(0, 80) + "…" : text), el("td", {}, cell)));
      if (isImage(v) || (isLine(v) && v.length > 1)) plotInto(cell, k, v, null, 300, 120);
    }
    box.append(el("h4", {}, group), table);
  }
  box.dataset.rid = String(rid);
}

// --- interactive arguments ----------------------------------------------------------
redrawers.interactive_args = () => {
  const ia = state.models.interactive_args || {}; const box = $("interactive-body"); box.replaceChildren();
  for (const [rid, req] of Object.entries(ia)) {
    const form = el("div", {"data-rid": rid}, el("h3", {}, "RID " + rid + ": " + (req.title || "")));
    const table = el("table");
    // arglist_desc: [[key, procdesc, group, tooltip], ...]
    for (const [key, procdesc, , tooltip] of req.arglist_desc || []) {
      table.append(el("tr", {title: tooltip || ""}, el("td", {}, key), el("td", {}, argEditor(key, procdesc))));
    }
    const result = el("span", {class: "result"});
    const answer = (p) => p.then(() => { result.textContent = ""; }, (err) => { result.textContent = err.message; });
    const supply = () => {
      let values; try { values = readArgs(table); } catch (err) { result.textContent = err.message; return; }
      answer(rpc("interactive_arg_db", "supply", [Number(rid), values]));
    };
    form.append(table, el("button", {class: "supply", onclick: supply}, "Supply"), " ",
      el("button", {class: "cancel", onclick: () => answer(rpc("interactive_arg_db", "cancel", [Number(rid)]))}, "Cancel"), " ", result);
    box.append(form);
  }
  if (!Object.keys(ia).length) box.append("No run is waiting for arguments.");
  const n = Object.keys(ia).length;
  document.querySelector("button[data-page=interactive]").textContent = n ? `Interactive (${n})` : "Interactive";
};

// --- the lock (docs/access.md) -------------------------------------------------------
redrawers.lock = () => {
  const info = state.models.lock || {}; const s = $("lock-state");
  s.dataset.locked = String(!!info.locked);
  s.textContent = info.locked
    ? "locked (" + (info.scope || []).join(", ") + ")" + (info.user ? " by " + info.user : "") + (info.note ? ": " + info.note : "")
    : "unlocked";
};
$("lock-do").onclick = () => {
  const key = $("lock-key").value;
  if (!key) { say("lock: type a key first"); return; }
  act(rpc("lock", "lock", [key], {note: $("lock-note").value || null}));
};
$("unlock-do").onclick = () => act(rpc("lock", "unlock", [$("lock-key").value]));
connect();
