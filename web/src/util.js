// Small DOM and formatting helpers shared by the views.

export const $ = (sel, root = document) => root.querySelector(sel);

// h('button', {class: 'x', onclick: f}, 'text', child...)
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k in el && typeof v !== 'string') el[k] = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : String(c));
  }
  return el;
}

export function setText(el, text) {
  const t = text === null || text === undefined ? '' : String(text);
  if (el.textContent !== t) el.textContent = t;
}

export function fmtInt(v) {
  return v === null || v === undefined || !Number.isFinite(v) ? '—' : Math.round(v).toLocaleString('en-US');
}

export function fmtNum(v, digits = 4) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  return Number(v.toPrecision(digits)).toString();
}

// "45s", "12m", "3h 5m", "2d 4h"
export function fmtDuration(sec) {
  if (sec === null || sec === undefined || !Number.isFinite(sec)) return '—';
  sec = Math.max(0, Math.round(sec));
  if (sec < 60) return `${sec}s`;
  const m = Math.floor(sec / 60);
  if (m < 60) return `${m}m`;
  const hrs = Math.floor(m / 60);
  if (hrs < 48) return `${hrs}h ${m % 60}m`;
  return `${Math.floor(hrs / 24)}d ${hrs % 24}h`;
}

export const now = () => Date.now() / 1000;

// Runs fn at most once per `ms`, on an animation frame, however often it is asked for.
export function frameThrottle(fn, ms = 250) {
  let pending = false;
  let last = 0;
  return () => {
    if (pending) return;
    pending = true;
    const wait = Math.max(0, last + ms - performance.now());
    setTimeout(() => requestAnimationFrame(() => {
      pending = false;
      last = performance.now();
      fn();
    }), wait);
  };
}

// The buttons a run in this state offers (what cdcdd accepts; none while a pause or stop is
// being carried out).
export function actionsFor(state, pending = '') {
  if (pending) return [];
  switch (state) {
    case 'running': return ['pause', 'stop'];
    case 'queued': return ['pause', 'stop'];
    case 'paused': return ['resume', 'stop', 'delete'];
    case 'stopped': case 'failed': return ['resume', 'delete'];
    case 'finished': return ['delete'];
    default: return [];
  }
}

export const ACTION_LABEL = { pause: 'Pause', resume: 'Resume', stop: 'Stop', delete: 'Delete' };
