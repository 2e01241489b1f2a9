// The dashboard shell: the runs list (polled), the connection state and the error banner,
// the new-run form, and the selected run's page (#/runs/ID).
import * as api from './api.js';
import { RunForm } from './runform.js';
import { RunDetail } from './rundetail.js';
import { $, h, setText, fmtInt, fmtNum, fmtDuration, now, actionsFor, ACTION_LABEL } from './util.js';

const POLL_MS = 2000;
const POLL_HIDDEN_MS = 10000;
const RETRY_MAX_MS = 5000;

const app = {
  runs: [],
  rows: new Map(), // run id -> <tr>
  reachable: null, // null until the first answer
  failures: 0,
  detail: null,
  pollTimer: 0,
  sse: 'connecting',
};

const form = new RunForm($('#new-run'), {
  onCreated: (res) => {
    if (res && res.id !== undefined) location.hash = `#/runs/${encodeURIComponent(res.id)}`;
    poll();
  },
});

// ---- connection state ----
function setConn(state, text) {
  const el = $('#conn');
  el.dataset.state = state;
  setText(el.querySelector('span'), text);
}

function showConn() {
  if (app.reachable === false) setConn('offline', 'offline');
  else if (app.reachable === null) setConn('connecting', 'connecting…');
  else if (app.detail && app.sse !== 'live') setConn('reconnecting', 'reconnecting…');
  else setConn('live', 'live');
}

function showBanner(content) {
  const b = $('#banner');
  b.textContent = '';
  if (!content) { b.hidden = true; return; }
  b.append(...content);
  b.hidden = false;
}

function unreachable(err, retryMs) {
  const first = app.reachable !== false;
  app.reachable = false;
  document.body.classList.add('offline');
  showConn();
  showBanner([
    h('strong', {}, 'cdcdd is unreachable.'),
    h('span', {}, `No answer from ${location.host || 'the daemon'}${err && err.status ? ` (HTTP ${err.status})` : ''}; retrying in ${Math.round(retryMs / 1000)} s. The data below may be out of date.`),
    h('button', { type: 'button', class: 'small', id: 'retry-now', onclick: () => poll() }, 'Retry now'),
  ]);
  if (first) $('#runs-loading').hidden = true;
}

function reachable() {
  const wasDown = app.reachable === false;
  app.reachable = true;
  app.failures = 0;
  document.body.classList.remove('offline');
  if (wasDown) {
    showBanner(null);
    app.detail?.kick();
  }
  showConn();
}

// ---- runs list ----
async function poll() {
  clearTimeout(app.pollTimer);
  let next = document.hidden ? POLL_HIDDEN_MS : POLL_MS;
  try {
    const runs = await api.listRuns();
    reachable();
    runs.sort((a, b) => (b.created ?? 0) - (a.created ?? 0) || compareIds(b.id, a.id));
    app.runs = runs;
    renderRuns();
    syncSelection();
  } catch (e) {
    if (e.status === 0 || e.status >= 500) {
      app.failures++;
      next = Math.min(RETRY_MAX_MS, 1000 * 2 ** (app.failures - 1));
      unreachable(e, next);
    } else {
      if (e.status === 401) needToken(); // auth = all: reads need the token too
      showBanner([h('strong', {}, `GET /runs failed: ${e.status}`), h('span', {}, e.message)]);
    }
  }
  app.pollTimer = setTimeout(poll, next);
}

function compareIds(a, b) {
  const na = Number(a), nb = Number(b);
  return Number.isFinite(na) && Number.isFinite(nb) ? na - nb : String(a).localeCompare(String(b));
}

// Rows are kept per run and updated in place, so polling never rebuilds the table.
function renderRuns() {
  $('#runs-loading').hidden = true;
  const empty = app.runs.length === 0;
  $('#runs-empty').hidden = !empty;
  $('#runs-table').hidden = empty;
  const tbody = $('#runs-table tbody');
  const seen = new Set();
  app.runs.forEach((run, i) => {
    seen.add(run.id);
    let tr = app.rows.get(run.id);
    if (!tr) {
      tr = makeRow(run);
      app.rows.set(run.id, tr);
    }
    updateRow(tr, run);
    if (tbody.children[i] !== tr) tbody.insertBefore(tr, tbody.children[i] || null);
  });
  for (const [id, tr] of app.rows) if (!seen.has(id)) { tr.remove(); app.rows.delete(id); }
}

function makeRow(run) {
  const tr = h('tr', { dataset: { id: run.id }, tabindex: '0' },
    h('td', {}, h('span', { class: 'name' }), h('span', { class: 'id' })),
    h('td', {}, h('span', { class: 'state' })),
    h('td', { class: 'num', dataset: { col: 'step', label: 'step' } }),
    h('td', { class: 'num', dataset: { col: 'tps', label: 'tok/s' } }),
    h('td', { class: 'num', dataset: { col: 'loss', label: 'loss' } }),
    h('td', { class: 'num', dataset: { col: 'age', label: 'age' } }),
    h('td', { class: 'actions' }));
  const open = () => { location.hash = `#/runs/${encodeURIComponent(run.id)}`; };
  tr.addEventListener('click', (e) => { if (!e.target.closest('button')) open(); });
  tr.addEventListener('keydown', (e) => { if (e.key === 'Enter' && e.target === tr) open(); });
  return tr;
}

function updateRow(tr, run) {
  const c = tr.children;
  setText(c[0].firstChild, run.name || `run ${run.id}`);
  setText(c[0].lastChild, `#${run.id}`);
  const st = c[1].firstChild;
  setText(st, run.pending ? `${run.pending === 'stop' ? 'stopping' : 'pausing'}…` : run.state);
  st.dataset.state = run.state;
  setText(c[2], run.maxSteps ? `${fmtInt(run.step)} / ${fmtInt(run.maxSteps)}` : fmtInt(run.step));
  setText(c[3], run.state === 'running' ? fmtInt(run.tokensPerS) : '—');
  setText(c[4], fmtNum(run.loss));
  setText(c[5], run.created ? fmtDuration(now() - run.created) : '—');
  tr.classList.toggle('selected', app.detail?.run.id === run.id);
  const verbs = actionsFor(run.state, run.pending);
  if (c[6].dataset.verbs !== verbs.join()) {
    c[6].dataset.verbs = verbs.join();
    c[6].textContent = '';
    for (const v of verbs) {
      c[6].append(h('button', { type: 'button', class: `small${v === 'delete' ? ' danger' : ''}`, 'data-action': v,
        onclick: (e) => { e.stopPropagation(); doAction(run, v); } }, ACTION_LABEL[v]));
    }
  }
}

async function doAction(run, verb, button) {
  if (verb === 'delete' && !confirm(`Delete run ${run.name || run.id} with its metrics, samples and checkpoints?`)) return;
  // pause and stop answer once the trainer has checkpointed: keep the buttons from repeating it
  const buttons = [...document.querySelectorAll(`tr[data-id="${CSS.escape(run.id)}"] button`)];
  if (app.detail?.run.id === run.id) buttons.push(...document.querySelectorAll('#run-actions button'));
  for (const b of buttons) b.disabled = true;
  try {
    if (verb === 'delete') await api.deleteRun(run.id);
    else await api.runAction(run.id, verb);
    if (verb === 'delete' && app.detail?.run.id === run.id) location.hash = '#/';
  } catch (e) {
    if (e.status === 401 || e.status === 403) needToken();
    showBanner([h('strong', {}, `${ACTION_LABEL[verb]} failed:`), h('span', {}, e.status === 0 ? 'cdcdd is unreachable.' : e.message),
      h('button', { type: 'button', class: 'small', onclick: () => showBanner(null) }, 'Dismiss')]);
  } finally {
    for (const b of buttons) b.disabled = false;
  }
  poll();
}

// ---- selection (#/runs/ID) ----
function routeId() {
  const m = location.hash.match(/^#\/runs\/(.+)$/);
  return m ? decodeURIComponent(m[1]) : null;
}

function syncSelection() {
  let id = routeId();
  // First visit without a hash: open the newest run.
  if (id === null && location.hash === '' && app.runs.length) id = app.runs[0].id;
  const run = id !== null ? app.runs.find((r) => r.id === id) : null;
  if (app.detail && (!run || app.detail.run.id !== id)) {
    app.detail.destroy();
    app.detail = null;
    app.sse = 'connecting';
  }
  if (run && !app.detail) {
    app.detail = new RunDetail($('#run-detail'), run, {
      onAction: doAction,
      onRunChanged: (r) => { const tr = app.rows.get(r.id); if (tr) updateRow(tr, r); },
      onStatus: (s) => { app.sse = s; showConn(); },
    });
  } else if (run) {
    app.detail.update(run);
  }
  for (const [rid, tr] of app.rows) tr.classList.toggle('selected', app.detail?.run.id === rid);
  showConn();
}

// ---- token (only when the daemon asks for one) ----
function needToken() {
  $('#token-box').hidden = false;
  $('#token-input').focus();
}
document.addEventListener('cdcd-auth-needed', needToken);
$('#token-box').addEventListener('submit', (e) => {
  e.preventDefault();
  api.setToken($('#token-input').value.trim());
  $('#token-box').hidden = true;
  showBanner(null);
});
if (api.getToken()) $('#token-input').value = api.getToken();

// ---- wiring ----
$('#new-run-btn').addEventListener('click', () => form.open());
for (const b of document.querySelectorAll('[data-open-form]')) b.addEventListener('click', () => form.open());
window.addEventListener('hashchange', () => syncSelection());
document.addEventListener('visibilitychange', () => { if (!document.hidden) poll(); });
setInterval(() => { for (const run of app.runs) { const tr = app.rows.get(run.id); if (tr) setText(tr.children[5], run.created ? fmtDuration(now() - run.created) : '—'); } }, 5000);

poll();
