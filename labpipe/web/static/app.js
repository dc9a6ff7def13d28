// labpipe-web: the page. One WebSocket to the web server; each notifier kept as a
// local copy (the master's mods applied as they come) and each page re-drawn from it.
"use strict";
const state = {models: {}, ws: null, nextId: 1, pending: {}, selected: null, plotKey: null, log: []};
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
  ws.onclose = () => { showConnection(false, "web server lost; reconnecting…"); setTimeout(connect, 500); };
}
function rpc(target, method, args = [], kwargs = {}) {
  const id = state.nextId++;
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
    if (msg.name) $("master-name").textContent = msg.name;
    showConnection(msg.connected, msg.connected ? "connected" : "master lost; reconnecting…");
  } else if (msg.type === "init") { state.models[msg.notifier] = msg.struct; redraw(msg.notifier, null); }
  else if (msg.type === "mod") {
    const m = state.models[msg.notifier];
    if (m !== undefined) { applyMod(m, msg.mod); redraw(msg.notifier, msg.mod); }
  } else if (msg.type === "log") addLog(msg.record);
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
redrawers.explist_status = () => {};
function argEditor(name, desc) {
  const d = desc[0] || desc; const ty = d.ty;
  const attrs = {"data-arg": name, "data-ty": ty};
  if (ty === "BooleanValue") { const i = el("input", {...attrs, type: "checkbox"}); i.checked = !!d.default; return i; }
  if (ty === "EnumerationValue") { const s = el("select", attrs); for (const c of d.choices) s.append(el("option", {value: c}, c)); if (d.default !== undefined) s.value = d.default; return s; }
  if (ty === "NumberValue") {
    const i = el("input", {...attrs, type: "number", step: String((d.step || 1) / (d.scale || 1))});
    if (d.min !== null && d.min !== undefined) i.min = d.min / (d.scale || 1);
    if (d.max !== null && d.max !== undefined) i.max = d.max / (d.scale || 1);
    if (d.default !== undefined && d.default !== null) i.value = d.default / (d.scale || 1);
    i.dataset.scale = d.scale || 1;
    return el("span", {}, i, " " + (d.unit || ""));
  }
  if (ty === "Scannable") return scanEditor(name, d);
  const i = el("input", {...attrs, type: "text"});
  if (d.default !== undefined) i.value = ty === "StringValue" ? d.default : JSON.stringify(d.default);
  return i;
}
function scanEditor(name, d) {
  const def = Array.isArray(d.default) ? d.default[0] : d.default || {ty: "NoScan", value: 0};
  const box = el("span", {"data-arg": name, "data-ty": "Scannable", "data-scale": d.scale || 1});
  const kind = el("select", {"data-part": "ty"});
  for (const t of ["NoScan", "RangeScan", "CenterScan", "ExplicitScan"]) kind.append(el("option", {value: t}, t));
  const fields = el("span");
  const draw = () => {
    const f = {NoScan: ["value", "repetitions"], RangeScan: ["start", "stop", "npoints", "randomize"],
               CenterScan: ["center", "span", "step", "randomize"], ExplicitScan: ["sequence"]}[kind.value];
    fields.replaceChildren();
    for (const k of f) {
      const v = def.ty === kind.value ? def[k] : undefined;
      const i = el("input", {"data-part": k, size: k === "sequence" ? 20 : 6, type: k === "randomize" ? "checkbox" : "text"});
      if (k === "randomize") i.checked = !!v; else if (v !== undefined) i.value = Array.isArray(v) ? v.join(",") : v;
      fields.append(" " + k + " ", i);
    }
  };
  kind.value = def.ty || "NoScan"; kind.onchange = draw; draw();
  box.append(kind, fields, " " + (d.unit || ""));
  return box;
}
function readArg(e) {
  const ty = e.dataset.ty;
  if (ty === "BooleanValue") return e.checked;
  if (ty === "NumberValue") return Number(e.value) * Number(e.dataset.scale);
  if (ty === "Scannable") {
    const scale = Number(e.dataset.scale); const scan = {ty: e.querySelector("[data-part=ty]").value};
    for (const i of e.querySelectorAll("input[data-part]")) {
      const k = i.dataset.part;
      if (k === "randomize") scan[k] = i.checked;
      else if (k === "sequence") scan[k] = i.value.split(",").map((x) => Number(x) * scale);
      else if (k === "npoints" || k === "repetitions") scan[k] = parseInt(i.value, 10);
      else scan[k] = Number(i.value) * scale;
    }
    return scan;
  }
  if (ty === "StringValue" || ty === "EnumerationValue") return e.value;
  return JSON.parse(e.value);
}
function selectExp(name) {
  state.selected = name;
  const exp = state.models.explist[name]; const form = $("exp-form"); form.replaceChildren();
  form.append(el("h3", {}, name + " (" + exp.class_name + ")"));
  const table = el("table");
  for (const [arg, desc] of Object.entries(exp.arguments || {})) table.append(el("tr", {}, el("td", {}, arg), el("td", {}, argEditor(arg, desc))));
  form.append(table);
  const sd = exp.scheduler_defaults || {};
  const rev = (state.models.explist_status || {}).cur_rev;
  form.append(el("p", {}, "pipeline ", el("input", {id: "sub-pipeline", value: sd.pipeline_name || "main"}),
    " priority ", el("input", {id: "sub-priority", type: "number", value: sd.priority || 0}),
    " due ", el("input", {id: "sub-due", type: "datetime-local"}),
    " flush ", el("input", {id: "sub-flush", type: "checkbox"}),
    rev ? " revision " + rev : ""));
  form.append(el("button", {id: "validate", onclick: () => submit(true)}, "Validate"), " ",
              el("button", {id: "submit", onclick: () => submit(false)}, "Submit"), " ", el("span", {id: "sub-result"}));
}
async function submit(dryRun) {
  const exp = state.models.explist[state.selected]; const args = {};
  const out = $("sub-result");
  try {
    for (const e of $("exp-form").querySelectorAll("[data-arg]")) if (e.parentElement.closest("[data-arg]") === null) args[e.dataset.arg] = readArg(e);
  } catch (err) { out.textContent = "bad value: " + err.message; return; }
  const expid = {file: exp.file, class_name: exp.class_name, arguments: args, log_level: 30, repo_rev: null};
  const pipeline = $("sub-pipeline").value; const due = $("sub-due").value;
  try {
    if (dryRun) {
      const problems = await rpc("schedule", "validate", [pipeline, expid]);
      out.textContent = problems.length ? problems.join("; ") : "valid";
    } else {
      const rid = await rpc("schedule", "submit", [pipeline, expid, Number($("sub-priority").value),
        due ? new Date(due).getTime() / 1000 : null, $("sub-flush").checked]);
      out.textContent = "RID " + rid;
    }
  } catch (err) { out.textContent = err.message; }
}

// --- schedule -----------------------------------------------------------------------
function act(p) { p.then(() => say(""), (err) => say(err.message)); }
function scheduleRow(rid, r) {
  const prog = r.progress && r.progress.total ? r.progress.done / r.progress.total : null;
  const eta = r.eta ? Math.max(0, Math.round(r.eta - Date.now() / 1000)) + " s" : "";
  const bar = el("span", {class: "bar"}, el("div", {style: "width:" + (prog === null ? 0 : Math.round(100 * prog)) + "px"}));
  const prio = el("input", {type: "number", size: 3, value: r.priority, onchange: (e) => act(rpc("schedule", "change", [Number(rid)], {priority: Number(e.target.value)}))});
  const blocked = (r.blocked_by || []).map((b) => b.rid).join(",");
  return el("tr", {"data-rid": rid, "data-status": r.status},
    el("td", {}, rid), el("td", {}, r.pipeline), el("td", {class: "status"}, r.status), el("td", {}, prio),
    el("td", {}, r.due_date ? new Date(r.due_date * 1000).toLocaleString() : ""),
    el("td", {}, r.expid.file || "(content)"), el("td", {}, r.expid.class_name || ""),
    el("td", {}, bar, " " + eta), el("td", {}, blocked),
    el("td", {}, el("button", {class: "delete", onclick: () => act(rpc("schedule", "delete", [Number(rid)]))}, "Delete"), " ",
      el("button", {class: "terminate", onclick: () => act(rpc("schedule", "request_termination", [Number(rid)]))}, "Terminate")));
}
redrawers.schedule = (mod) => {
  const body = $("schedule-body"); const sched = state.models.schedule || {};
  // one row per mod: only the run the mod touches is drawn again
  if (mod && (mod.path.length > 0 || mod.action === "setitem" || mod.action === "delitem")) {
    const rid = mod.path.length ? String(mod.path[0]) : String(mod.key);
    const old = body.querySelector(`tr[data-rid="${rid}"]`);
    if (!(rid in sched)) { if (old) old.remove(); return; }
    const row = scheduleRow(rid, sched[rid]);
    if (old) old.replaceWith(row); else body.append(row);
    return;
  }
  body.replaceChildren(...Object.keys(sched).sort((a, b) => a - b).map((rid) => scheduleRow(rid, sched[rid])));
};
redrawers.pipelines = () => {
  const box = $("pipelines"); box.replaceChildren("Pipelines: ");
  for (const [name, p] of Object.entries(state.models.pipelines || {})) {
    const held = p && (p.held || p.state === "held");
    box.append(el("span", {"data-pipeline": name}, name + (held ? " (held) " : " "),
      el("button", {onclick: () => act(rpc("schedule", held ? "release" : "hold", [name]))}, held ? "Release" : "Hold"), " "));
  }
};

// --- datasets -----------------------------------------------------------------------
redrawers.datasets = (mod) => {
  const f = $("ds-filter").value; const body = $("datasets-body"); const ds = state.models.datasets || {};
  body.replaceChildren(...Object.keys(ds).sort().filter((k) => k.includes(f)).map((k) => {
    const [persist, value, meta] = ds[k];
    const text = JSON.stringify(value);
    return el("tr", {"data-key": k}, el("td", {}, k), el("td", {}, text.length > 60 ? text.slice(0, 60) + "…" : text),
      el("td", {}, (meta && meta.unit) || ""), el("td", {}, persist ? "persist" : ""),
      el("td", {}, el("button", {onclick: () => { state.plotKey = k; plot(); }}, "Plot"), " ",
        el("button", {onclick: () => act(rpc("dataset_db", "delete", [k]))}, "Delete")));
  }));
  if (state.plotKey) plot();
};
$("ds-filter").oninput = () => redrawers.datasets();
$("ds-set").onclick = () => {
  let v; try { v = JSON.parse($("ds-value").value); } catch (err) { say("bad value: " + err.message); return; }
  act(rpc("dataset_db", "set", [$("ds-key").value, v, $("ds-persist").checked]));
};
function plotValues(canvas, title, value) {
  $("plot-title").textContent = title;
  const c = canvas.getContext("2d"); c.clearRect(0, 0, canvas.width, canvas.height);
  if (!Array.isArray(value)) return;
  if (Array.isArray(value[0])) {  // 2-D: an image
    const h = value.length, w = value[0].length; const flat = value.flat();
    const lo = Math.min(...flat), hi = Math.max(...flat); const img = c.createImageData(w, h);
    flat.forEach((v, i) => { const g = hi > lo ? Math.round(255 * (v - lo) / (hi - lo)) : 0; img.data.set([g, g, g, 255], 4 * i); });
    const tmp = document.createElement("canvas"); tmp.width = w; tmp.height = h; tmp.getContext("2d").putImageData(img, 0, 0);
    c.imageSmoothingEnabled = false; c.drawImage(tmp, 0, 0, canvas.width, canvas.height);
    canvas.dataset.points = String(flat.length); return;
  }
  let lo = Infinity, hi = -Infinity;
  for (const v of value) { if (v < lo) lo = v; if (v > hi) hi = v; }
  if (hi === lo) { hi += 1; lo -= 1; }
  c.beginPath(); c.strokeStyle = "#06c";
  value.forEach((v, i) => {
    const x = value.length > 1 ? i * (canvas.width - 1) / (value.length - 1) : 0;
    const y = canvas.height - 1 - (v - lo) * (canvas.height - 1) / (hi - lo);
    if (i === 0) c.moveTo(x, y); else c.lineTo(x, y);
  });
  c.stroke(); canvas.dataset.points = String(value.length);
}
function plot() {
  const ds = state.models.datasets || {}; const entry = ds[state.plotKey];
  if (entry) plotValues($("plot"), state.plotKey, entry[1]);
}

// --- log ----------------------------------------------------------------------------
function addLog(record) {
  state.log.push(record); if (state.log.length > 5000) state.log.shift();
  drawLog();
}
function logText(r) { return Array.isArray(r) ? r.join(" ") : (typeof r === "string" ? r : JSON.stringify(r)); }
function logLevel(r) { return Array.isArray(r) && typeof r[0] === "number" ? r[0] : 20; }
function drawLog() {
  const min = Number($("log-level").value); const q = $("log-search").value;
  $("log").textContent = state.log.filter((r) => logLevel(r) >= min && logText(r).includes(q)).map(logText).join("\n");
  $("log").scrollTop = $("log").scrollHeight;
}
$("log-level").onchange = drawLog; $("log-search").oninput = drawLog;

// --- history ------------------------------------------------------------------------
redrawers.history = () => {
  const h = state.models.history || {}; const body = $("history-body");
  body.replaceChildren(...Object.keys(h).sort((a, b) => b - a).slice(0, 500).map((rid) => {
    const r = h[rid];
    return el("tr", {"data-rid": rid, "data-status": r.status}, el("td", {}, rid), el("td", {}, r.status),
      el("td", {}, (r.expid && r.expid.file) || ""), el("td", {}, r.class_name || ""),
      el("td", {}, r.ended ? new Date(r.ended * 1000).toLocaleString() : ""), el("td", {class: "err"}, r.error || ""),
      el("td", {}, el("button", {class: "resubmit", onclick: () => act(rpc("history", "resubmit", [Number(rid)]))}, "Resubmit"),
        r.results ? el("button", {class: "open-results", onclick: () => openResults(Number(rid))}, "Results") : ""));
  }));
};
async function openResults(rid) {
  const box = $("results"); box.replaceChildren("loading…");
  try {
    const res = await rpc("history", "read_results", [rid]);
    box.replaceChildren(el("h3", {}, "Results of RID " + rid));
    const table = el("table", {id: "results-table"});
    for (const [group, values] of Object.entries(res)) for (const [k, v] of Object.entries(values)) {
      const canvas = el("canvas", {width: 300, height: 100});
      table.append(el("tr", {"data-key": group + "/" + k}, el("td", {}, group), el("td", {}, k),
        el("td", {}, JSON.stringify(v).slice(0, 80)), el("td", {}, Array.isArray(v) ? canvas : "")));
      if (Array.isArray(v)) plotValues(canvas, "", v);
    }
    box.append(table);
  } catch (err) { box.replaceChildren(err.message); }
}

// --- interactive arguments ----------------------------------------------------------
redrawers.interactive_args = () => {
  const ia = state.models.interactive_args || {}; const box = $("interactive-body"); box.replaceChildren();
  for (const [rid, req] of Object.entries(ia)) {
    const form = el("div", {"data-rid": rid}, el("h3", {}, "RID " + rid + ": " + (req.title || "")));
    const table = el("table");
    // arglist_desc: [[key, procdesc, group, tooltip], ...]
    for (const [key, procdesc] of req.arglist_desc || []) {
      table.append(el("tr", {}, el("td", {}, key), el("td", {}, argEditor(key, [procdesc]))));
    }
    const values = () => { const v = {}; for (const e of form.querySelectorAll("[data-arg]")) if (e.parentElement.closest("[data-arg]") === null) v[e.dataset.arg] = readArg(e); return v; };
    form.append(table, el("button", {class: "supply", onclick: () => act(rpc("interactive_arg_db", "supply", [Number(rid), values()]))}, "Supply"), " ",
      el("button", {class: "cancel", onclick: () => act(rpc("interactive_arg_db", "cancel", [Number(rid)]))}, "Cancel"));
    box.append(form);
  }
  if (!Object.keys(ia).length) box.append("No run is waiting for arguments.");
};
connect();
