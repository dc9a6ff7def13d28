// labpipe-web: plots. 1-D data is drawn with uPlot (vendored in
// static/vendor/uplot-1.6.32, MIT licence: fast enough for 10,000-point datasets at
// 10 Hz); 2-D data as a grey-scale image on a canvas. A box drawn into keeps its plot
// (box._plot) and its figures in data attributes (data-kind, data-points, data-last),
// which is what the tests read.
"use strict";

// [xs, ys] of a 1-D value, against its index or against another 1-D value (sorted by x:
// uPlot wants x ascending; the shorter length wins while a run is still filling one)
function lineData(ys, xs) {
  if (!Array.isArray(xs)) return [ys.map((_, i) => i), ys.slice()];
  const n = Math.min(xs.length, ys.length);
  const order = [...Array(n).keys()].sort((a, b) => xs[a] - xs[b]);
  return [order.map((i) => xs[i]), order.map((i) => ys[i])];
}

function isImage(value) {
  return Array.isArray(value) && value.length > 0 && Array.isArray(value[0]);
}

function isLine(value) {
  return Array.isArray(value) && value.every((v) => typeof v === "number" || v === null);
}

function drawImage(box, rows, width, height) {
  if (box._plot) { box._plot.destroy(); box._plot = null; }
  let canvas = box.querySelector("canvas.image");
  if (!canvas) { box.replaceChildren(); canvas = document.createElement("canvas"); canvas.className = "image"; box.append(canvas); }
  canvas.width = width; canvas.height = height;
  const h = rows.length, w = rows[0].length, flat = rows.flat();
  let lo = Infinity, hi = -Infinity;
  for (const v of flat) { if (v < lo) lo = v; if (v > hi) hi = v; }
  const img = new ImageData(w, h);
  flat.forEach((v, i) => {
    const g = hi > lo ? Math.round(255 * (v - lo) / (hi - lo)) : 0;
    img.data.set([g, g, g, 255], 4 * i);
  });
  const tmp = document.createElement("canvas"); tmp.width = w; tmp.height = h;
  tmp.getContext("2d").putImageData(img, 0, 0);
  const c = canvas.getContext("2d");
  c.imageSmoothingEnabled = false;
  c.drawImage(tmp, 0, 0, width, height);
  box.dataset.kind = "image"; box.dataset.points = String(flat.length);
  box.dataset.last = String(flat[flat.length - 1]);
}

function drawLine(box, label, ys, xs, width, height, xLabel) {
  const data = lineData(ys, xs);
  const p = box._plot;
  const shape = [width, label, xLabel].join("\n");
  if (p && p._shape === shape) p.setData(data);
  else {
    if (p) p.destroy();
    box.replaceChildren();
    const opts = {width, height, scales: {x: {time: false}},
                  series: [{label: xLabel}, {label, stroke: "#06c", points: {show: data[0].length < 200}}]};
    box._plot = new uPlot(opts, data, box);
    box._plot._shape = shape;
  }
  box.dataset.kind = "line"; box.dataset.points = String(data[1].length);
  box.dataset.last = String(ys[ys.length - 1]);
}

// draw value (a dataset's value) into box; xs: the x values (named xLabel), or null for
// the index
function plotInto(box, label, value, xs = null, width = 600, height = 300, xLabel = "index") {
  if (isImage(value)) drawImage(box, value, width, height);
  else if (isLine(value) && value.length) drawLine(box, label, value, xs, width, height, xs ? xLabel : "index");
  else {
    if (box._plot) { box._plot.destroy(); box._plot = null; }
    box.replaceChildren("not a 1-D or 2-D numeric array");
    box.dataset.kind = "none"; box.dataset.points = "0";
  }
}
