// SVG line charts for the web page: drawChart(svgElement, epochs, series, bounds).
// No library: axes, grid, one polyline and one circle per point (with a <title> tooltip) and
// a legend per series; loaded before app.js.
"use strict";

function svg(tag, attrs = {}, text = null) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, value);
  if (text !== null) node.textContent = text;
  return node;
}

function niceStep(span) {
  const raw = span / 5;
  const power = 10 ** Math.floor(Math.log10(raw));
  return [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
}

function drawChart(node, total, series, bounds) {
  const W = 480, H = 260, L = 46, R = 12, T = 26, B = 30;
  // Only finite values are drawn (a null in a row would plot as 0 and break the labels).
  series = series.map((s) => ({ ...s, points: s.points.filter(([, v]) => Number.isFinite(v)) }));
  const values = series.flatMap((s) => s.points.map((p) => p[1]));
  node.replaceChildren();
  node.setAttribute("data-points", `${series[0].points.length}`);
  if (!values.length) {
    node.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" },
      "waiting for the first epoch…"));
    return;
  }
  let low = bounds.min ?? Math.min(...values);
  let high = bounds.max ?? Math.max(...values);
  if (bounds.max !== undefined) high = Math.min(bounds.max, Math.max(...values) * 1.1 + 1);
  else high = high * 1.1 || 1;
  const step = niceStep(high - low || 1);
  high = Math.ceil(high / step) * step;
  const x = (epoch) => L + (total <= 1 ? 0.5 : (epoch - 1) / (total - 1)) * (W - L - R);
  const y = (v) => T + (1 - (v - low) / (high - low || 1)) * (H - T - B);
  for (let v = low; v <= high + 1e-9; v += step) {
    node.append(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    node.append(svg("text", { x: L - 6, y: y(v) + 4, "text-anchor": "end" }, `${+v.toFixed(3)}`));
  }
  node.append(svg("line", { x1: L, x2: W - R, y1: H - B, y2: H - B, class: "axis" }));
  node.append(svg("line", { x1: L, x2: L, y1: T, y2: H - B, class: "axis" }));
  const xStep = Math.max(1, Math.ceil(total / 8));
  for (let e = 1; e <= total; e += xStep) {
    node.append(svg("text", { x: x(e), y: H - B + 16, "text-anchor": "middle" }, `${e}`));
  }
  node.append(svg("text", { x: W - R, y: H - 4, "text-anchor": "end" }, "epoch"));
  series.forEach((s, i) => {
    const points = s.points.map(([e, v]) => `${x(e)},${y(v)}`).join(" ");
    node.append(svg("polyline", { points, fill: "none", stroke: s.color, "stroke-width": 2 }));
    for (const [e, v] of s.points) {
      const dot = svg("circle", { cx: x(e), cy: y(v), r: 3, fill: s.color, class: s.cls, "data-epoch": e });
      dot.append(svg("title", {}, `${s.name}, epoch ${e}: ${v.toFixed(3)}`));
      node.append(dot);
    }
    const lx = L + 8 + i * 130;
    node.append(svg("rect", { x: lx, y: 8, width: 12, height: 4, fill: s.color }));
    node.append(svg("text", { x: lx + 16, y: 14 }, s.name));
  });
}
