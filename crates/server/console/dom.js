// Building the DOM without HTML strings. Every value that may come from the
// API goes in as a text node or an attribute set with setAttribute, never
// parsed as markup; event handlers are attached with addEventListener (the
// Content-Security-Policy forbids inline ones anyway).

const SVG_NS = 'http://www.w3.org/2000/svg';

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else if (child instanceof Node) el.appendChild(child);
    else el.appendChild(document.createTextNode(String(child)));
  }
}

function setAttrs(el, attrs) {
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'on') {
      for (const [event, fn] of Object.entries(value)) el.addEventListener(event, fn);
    } else if (/^on/i.test(name) || name === 'style' || name === 'srcdoc') {
      throw new Error(`refusing attribute ${name}`);
    } else if (name === 'href' && !String(value).startsWith('#/')) {
      // Links inside the console only.
      throw new Error(`refusing link ${value}`);
    } else {
      el.setAttribute(name, value === true ? '' : String(value));
    }
  }
}

/** An HTML element: h('td', {class: 'num'}, 'text', child, [more]). */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** An SVG element, same shape as h(). */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** Replaces the children of el. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A table: columns [{title, cell: row => node|string, num?: bool}], rows. */
export function table(columns, rows, {empty = 'Nothing yet.', testid} = {}) {
  if (!rows.length) return h('p', {class: 'empty', 'data-testid': testid}, empty);
  return h('table', {'data-testid': testid},
    h('thead', null, h('tr', null, columns.map((c) => h('th', {class: c.num ? 'num' : null}, c.title)))),
    h('tbody', null, rows.map((row) =>
      h('tr', null, columns.map((c) => h('td', {class: c.num ? 'num' : null}, c.cell(row)))))));
}

/** A short, readable form of a UUID (its last 8 hex digits; UUIDv7s share their first). */
export function shortId(id) {
  return id ? `…${String(id).slice(-8)}` : '—';
}

/** A time as the browser's local date and time, or a dash. */
export function when(t) {
  if (!t) return '—';
  const d = new Date(t);
  return Number.isNaN(d.getTime()) ? String(t) : d.toLocaleString();
}

/** A value as compact JSON for a table cell. */
export function json(v, max = 160) {
  if (v === null || v === undefined) return '—';
  const text = typeof v === 'string' ? v : JSON.stringify(v);
  return text.length > max ? `${text.slice(0, max - 1)}…` : text;
}

/** A status word with a class for its colour. */
export function badge(text, kind) {
  return h('span', {class: `badge ${kind || String(text).replace(/[^a-z_]/g, '')}`}, String(text));
}

/** A labelled figure: [label, value] pairs in a definition list. */
export function facts(pairs, testid) {
  return h('dl', {class: 'facts', 'data-testid': testid},
    pairs.filter(Boolean).map(([k, v]) => h('div', null, h('dt', null, k), h('dd', null, v))));
}
