// Small charts drawn as inline SVG: stacked bars over days, horizontal bars
// per name, and lines per series over days. Every mark carries a <title>
// (the browser's tooltip) with its exact value; colours come from the
// Okabe–Ito palette, which stays distinguishable for colour-blind readers.

import {h, s} from './dom.js';

const PALETTE = ['#0072B2', '#E69F00', '#009E73', '#CC79A7', '#56B4E9', '#D55E00', '#F0E442', '#999999'];
export const color = (i) => PALETTE[i % PALETTE.length];

/** A round upper bound for an axis (ticks at quarters of it): 1, 2, 4, 6 or 8 times a power of ten. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 4, 6, 8, 10]) if (m * p >= v * (1 - 1e-12)) return m * p;
  return 10 * p;
}

function figure(title, testid, ...body) {
  return h('figure', {class: 'chart', 'data-testid': testid}, h('figcaption', null, title), body);
}

function emptyFigure(title, testid, text) {
  return h('figure', {class: 'chart empty', 'data-testid': testid, 'data-empty': 'true'},
    h('figcaption', null, title), h('p', {class: 'empty'}, text));
}

function legend(names) {
  return h('ul', {class: 'legend'}, names.map((name, i) => h('li', null,
    s('svg', {width: 10, height: 10, viewBox: '0 0 10 10', 'aria-hidden': 'true'},
      s('rect', {width: 10, height: 10, fill: color(i)})),
    name)));
}

const W = 640;
const H = 240;
const M = {left: 72, right: 12, top: 12, bottom: 44};

function yAxis(max, format) {
  const plotH = H - M.top - M.bottom;
  const marks = [];
  for (let i = 0; i <= 4; i += 1) {
    const v = (max * i) / 4;
    const y = M.top + plotH - (plotH * i) / 4;
    marks.push(s('line', {class: 'grid', x1: M.left, x2: W - M.right, y1: y, y2: y}));
    marks.push(s('text', {class: 'tick', x: M.left - 6, y: y + 4, 'text-anchor': 'end'}, format(v)));
  }
  return marks;
}

/** Labels under the x axis: about eight, counted back from the last (today). */
function xLabels(labels, xOf) {
  const every = Math.max(1, Math.ceil(labels.length / 8));
  const last = labels.length - 1;
  // Days read as MM-DD; the full date is in each mark's tooltip.
  const short = (label) => (/^\d{4}-\d\d-\d\d$/.test(label) ? label.slice(5) : label);
  return labels.map((label, i) => ((last - i) % every === 0
    ? s('text', {class: 'tick', x: xOf(i), y: H - M.bottom + 16, 'text-anchor': 'middle'}, short(label))
    : null));
}

/**
 * Stacked bars: one bar per label (a day), one segment per series.
 * series: [{name, values: [number], texts: [string]}]; format: axis ticks.
 */
export function stackedBars({title, labels, series: all, format, testid, emptyText = 'No usage in this period.'}) {
  // Series with nothing to draw stay out of the legend too.
  const series = all.filter((x) => x.values.some((v) => v > 0));
  const totals = labels.map((_, i) => series.reduce((sum, x) => sum + (x.values[i] || 0), 0));
  const top = Math.max(0, ...totals);
  if (!(top > 0)) return emptyFigure(title, testid, emptyText);
  const max = niceMax(top);
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const slot = plotW / labels.length;
  const barW = Math.max(2, Math.min(48, slot * 0.7));
  const xOf = (i) => M.left + slot * i + slot / 2;
  const bars = [];
  labels.forEach((label, i) => {
    let y = M.top + plotH;
    series.forEach((x, j) => {
      const v = x.values[i] || 0;
      if (!(v > 0)) return;
      const hgt = Math.max(1, (plotH * v) / max);
      y -= hgt;
      bars.push(s('rect', {class: 'bar', x: xOf(i) - barW / 2, y, width: barW, height: hgt, fill: color(j)},
        s('title', null, `${label} · ${x.name}: ${x.texts ? x.texts[i] : format(v)}`)));
    });
  });
  return figure(title, testid,
    s('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, class: 'plot'},
      yAxis(max, format), bars, xLabels(labels, xOf)),
    legend(series.map((x) => x.name)));
}

/** Horizontal bars, one per row: rows [{label, value, text}], largest first. */
export function hbars({title, rows, testid, emptyText = 'No usage in this period.'}) {
  const shown = rows.filter((r) => r.value > 0).sort((a, b) => b.value - a.value).slice(0, 12);
  if (!shown.length) return emptyFigure(title, testid, emptyText);
  const rowH = 26;
  const height = shown.length * rowH + 8;
  const labelW = 190;
  const textW = 150;
  const max = shown[0].value;
  const plotW = W - labelW - textW;
  const marks = shown.map((r, i) => {
    const y = 4 + i * rowH;
    const w = Math.max(1, (plotW * r.value) / max);
    const label = r.label.length > 28 ? `${r.label.slice(0, 27)}…` : r.label;
    return s('g', null,
      s('text', {class: 'label', x: labelW - 8, y: y + 16, 'text-anchor': 'end'}, label, s('title', null, r.label)),
      s('rect', {class: 'bar', x: labelW, y: y + 3, width: w, height: rowH - 8, fill: color(i)},
        s('title', null, `${r.label}: ${r.text}`)),
      s('text', {class: 'value', x: labelW + w + 6, y: y + 16}, r.text));
  });
  return figure(title, testid, s('svg', {viewBox: `0 0 ${W} ${height}`, role: 'img', 'aria-label': title, class: 'plot'}, marks));
}

/** Lines over labels (days): series [{name, values: [number], texts: [string]}]. */
export function lines({title, labels, series, format, testid, emptyText = 'No spend in this period.'}) {
  const top = Math.max(0, ...series.flatMap((x) => x.values));
  if (!(top > 0)) return emptyFigure(title, testid, emptyText);
  const max = niceMax(top);
  const plotW = W - M.left - M.right;
  const plotH = H - M.top - M.bottom;
  const xOf = labels.length > 1 ? (i) => M.left + (plotW * i) / (labels.length - 1) : () => M.left + plotW / 2;
  const yOf = (v) => M.top + plotH - (plotH * v) / max;
  const marks = series.map((x, j) => s('g', {class: 'series', 'data-series': x.name},
    s('polyline', {class: 'line', fill: 'none', stroke: color(j), points: x.values.map((v, i) => `${xOf(i)},${yOf(v || 0)}`).join(' ')}),
    x.values.map((v, i) => s('circle', {class: 'point', cx: xOf(i), cy: yOf(v || 0), r: v > 0 ? 3.5 : 2, fill: color(j)},
      s('title', null, `${labels[i]} · ${x.name}: ${x.texts ? x.texts[i] : format(v)}`)))));
  return figure(title, testid,
    s('svg', {viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': title, class: 'plot'},
      yAxis(max, format), marks, xLabels(labels, xOf)),
    legend(series.map((x) => x.name)));
}

/** The last `n` days (UTC, as the server groups them) up to today, as YYYY-MM-DD. */
export function lastDays(n) {
  const out = [];
  const today = new Date();
  for (let i = n - 1; i >= 0; i -= 1) {
    const d = new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i));
    out.push(d.toISOString().slice(0, 10));
  }
  return out;
}

/** Axis ticks for dollars: enough decimals to tell ticks apart. */
export function dollarTick(v) {
  if (v === 0) return '$0';
  if (v >= 1) return `$${v.toFixed(2)}`;
  if (v < 1e-6) return `$${v.toExponential(1)}`;
  return `$${Number(v.toPrecision(3))}`;
}

/** Axis ticks for counts: 1.2k, 3.4M. */
export function countTick(v) {
  if (v >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (v >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  return String(Math.round(v * 100) / 100);
}
