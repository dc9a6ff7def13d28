// labpipe-web: argument editors, as the ARTIQ dashboard's submission form has them.
// argEditor(name, procdesc) makes the editor of one argument (an element carrying
// data-arg=NAME); readArgs(form) reads every editor of a form back into the values a
// submission carries (SI units: a number typed as 2 in "MHz" is 2e6). A value the page
// cannot read raises an Error of one line naming the argument.
"use strict";

const SCAN_FIELDS = {
  NoScan: ["value", "repetitions"],
  RangeScan: ["start", "stop", "npoints", "randomize"],
  CenterScan: ["center", "span", "step", "randomize"],
  ExplicitScan: ["sequence"],
};
const SCAN_COUNTS = new Set(["npoints", "repetitions"]);

function mk(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const k of kids) e.append(k);
  return e;
}

// a number in SI units as shown in the argument's unit (no float noise: 0.30000000000000004)
function shown(value, scale) {
  return String(Number((value / scale).toPrecision(12)));
}

function argEditor(name, desc) {
  const d = Array.isArray(desc) ? desc[0] : desc;
  const ty = d.ty;
  const attrs = {"data-arg": name, "data-ty": ty};
  if (ty === "BooleanValue") {
    const i = mk("input", {...attrs, type: "checkbox"});
    i.checked = !!d.default;
    return i;
  }
  if (ty === "EnumerationValue") {
    const s = mk("select", attrs);
    for (const c of d.choices) s.append(mk("option", {value: c}, c));
    if (d.default !== undefined) s.value = d.default;
    return s;
  }
  if (ty === "NumberValue") {
    const scale = d.scale || 1;
    const i = mk("input", {...attrs, type: "number", "data-scale": scale,
                           "data-int": String(d.type === "int"),
                           step: d.step ? shown(d.step, scale) : "any"});
    if (d.min !== null && d.min !== undefined) i.min = shown(d.min, scale);
    if (d.max !== null && d.max !== undefined) i.max = shown(d.max, scale);
    if (d.default !== undefined && d.default !== null) i.value = shown(d.default, scale);
    return mk("span", {}, i, " " + (d.unit || ""));
  }
  if (ty === "Scannable") return scanEditor(name, d);
  // StringValue and PYONValue (whose default and value are PYON text) as text
  const i = mk("input", {...attrs, type: "text", size: 30});
  if (d.default !== undefined) i.value = d.default;
  return i;
}

function scanEditor(name, d) {
  const scale = d.scale || 1;
  const defaults = {};
  for (const s of (Array.isArray(d.default) ? d.default : [d.default || {ty: "NoScan", value: 0}])) {
    if (s && s.ty) defaults[s.ty] = s;
  }
  const first = Array.isArray(d.default) && d.default.length ? d.default[0].ty : "NoScan";
  const box = mk("span", {"data-arg": name, "data-ty": "Scannable", "data-scale": scale});
  const kind = mk("select", {"data-part": "ty"});
  for (const t of Object.keys(SCAN_FIELDS)) kind.append(mk("option", {value: t}, t));
  const fields = mk("span");
  const draw = () => {
    const def = defaults[kind.value] || {};
    fields.replaceChildren();
    for (const k of SCAN_FIELDS[kind.value]) {
      const v = def[k];
      const i = mk("input", {"data-part": k, size: k === "sequence" ? 24 : 7,
                             type: k === "randomize" ? "checkbox" : "text"});
      if (k === "randomize") i.checked = !!v;
      else if (v !== undefined && v !== null) {
        i.value = SCAN_COUNTS.has(k) ? String(v)
          : Array.isArray(v) ? v.map((x) => shown(x, scale)).join(", ") : shown(v, scale);
      }
      fields.append(" " + k + " ", i);
    }
  };
  kind.value = first in SCAN_FIELDS ? first : "NoScan";
  kind.onchange = draw;
  draw();
  box.append(kind, fields, " " + (d.unit || ""));
  return box;
}

function number(text, what) {
  const t = String(text).trim();
  const v = Number(t);
  if (t === "" || !Number.isFinite(v)) throw new Error(`${what}: ${JSON.stringify(t)} is not a number`);
  return v;
}

function readArg(e) {
  const name = e.dataset.arg, ty = e.dataset.ty;
  if (ty === "BooleanValue") return e.checked;
  if (ty === "NumberValue") {
    const v = number(e.value, name) * Number(e.dataset.scale);
    return e.dataset.int === "true" ? Math.round(v) : v;
  }
  if (ty === "Scannable") {
    const scale = Number(e.dataset.scale);
    const scan = {ty: e.querySelector("select[data-part=ty]").value};
    for (const i of e.querySelectorAll("input[data-part]")) {
      const k = i.dataset.part, what = `${name} ${k}`;
      if (k === "randomize") scan[k] = i.checked;
      else if (k === "sequence") scan[k] = i.value.split(",").filter((x) => x.trim()).map((x) => number(x, what) * scale);
      else if (SCAN_COUNTS.has(k)) {
        const n = number(i.value, what);
        if (!Number.isInteger(n)) throw new Error(`${what}: ${n} is not a whole number`);
        scan[k] = n;
      } else scan[k] = number(i.value, what) * scale;
    }
    if (scan.ty === "RangeScan" || scan.ty === "CenterScan") scan.seed = null;
    return scan;
  }
  return e.value;  // StringValue, EnumerationValue, PYONValue (PYON text)
}

function readArgs(form) {
  const values = {};
  for (const e of form.querySelectorAll("[data-arg]")) values[e.dataset.arg] = readArg(e);
  return values;
}
