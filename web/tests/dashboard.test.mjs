// Browser tests of the dashboard against a real cdcdd, in Debian's headless Chromium driven by
// playwright-core (no browser download). Started by tests/integration/test_dashboard.sh, which
// builds the assets and the token files and passes:
//   CDCD_DAEMON_CMD   JSON array: the daemon's argv without --listen (this script adds
//                     "--listen 127.0.0.1:PORT" and restarts it with the same state dir)
//   CDCD_RUN_CONFIG   JSON of the short run started through the API
//   CDCD_ART          folder for screenshots and the daemon's log
//   CHROMIUM          browser binary (default /usr/bin/chromium)
// Prints "PASS name" / "FAIL name: detail" lines and exits 1 when anything failed.
import { chromium } from 'playwright-core';
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

const ART = process.env.CDCD_ART || path.resolve('tests/artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const DAEMON_CMD = JSON.parse(process.env.CDCD_DAEMON_CMD || '[]');
const RUN_CONFIG = JSON.parse(process.env.CDCD_RUN_CONFIG || '{"preset":"tiny"}');
const TOTAL_BUDGET_MS = Number(process.env.CDCD_DASH_BUDGET_MS || 150000);
fs.mkdirSync(ART, { recursive: true });

let failures = 0;
const pass = (name) => console.log(`PASS ${name}`);
const fail = (name, detail) => { failures++; console.log(`FAIL ${name}: ${String(detail).split('\n')[0]}`); };
const log = (...a) => console.log('  ', ...a);
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
const t0 = Date.now();

async function check(name, fn) {
  const t = Date.now();
  try {
    await fn();
    pass(name);
    log(`${name}: ${((Date.now() - t) / 1000).toFixed(1)} s`);
    return true;
  } catch (e) {
    fail(name, e && e.message ? e.message : e);
    return false;
  }
}

function assert(cond, msg) { if (!cond) throw new Error(msg); }

async function waitFor(fn, { timeout = 10000, interval = 200, what = 'condition' } = {}) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      last = await fn();
      if (last) return last;
    } catch (e) {
      if (e.fatal) throw e;
      last = e.message;
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}${last !== undefined && last !== false ? ` (last: ${JSON.stringify(last)})` : ''}`);
    await sleep(interval);
  }
}

// ---- the daemon ----
function freePort() {
  return new Promise((ok, ko) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
    s.on('error', ko);
  });
}

let daemon = null;
let port = 0;
let base = '';
const daemonLog = fs.openSync(path.join(ART, 'dashboard-cdcdd.log'), 'a');

function lastLogLine() {
  try {
    const lines = fs.readFileSync(path.join(ART, 'dashboard-cdcdd.log'), 'utf8').trim().split('\n');
    return lines[lines.length - 1];
  } catch { return 'no log'; }
}

async function startDaemon() {
  assert(DAEMON_CMD.length, 'CDCD_DAEMON_CMD is not set');
  const [cmd, ...args] = DAEMON_CMD;
  daemon = spawn(cmd, [...args, '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', daemonLog, daemonLog] });
  const proc = daemon;
  let exited = null;
  proc.on('exit', (code, sig) => { exited = `exited (${code ?? sig})`; });
  await waitFor(async () => {
    if (exited) throw Object.assign(new Error(`cdcdd ${exited}: ${lastLogLine()}`), { fatal: true });
    const r = await fetch(`${base}/ready`).catch(() => null);
    return r && r.status === 200;
  }, { timeout: 20000, what: 'cdcdd /ready' });
}

async function stopDaemon(sig = 'SIGTERM', timeout = 20000) {
  const proc = daemon;
  daemon = null;
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const done = new Promise((ok) => proc.on('exit', ok));
  proc.kill(sig);
  const t = setTimeout(() => proc.kill('SIGKILL'), timeout);
  await done;
  clearTimeout(t);
}

async function api(method, p, body) {
  const r = await fetch(`${base}${p}`, {
    method, headers: method !== 'GET' ? { 'Content-Type': 'application/json' } : {}, body: body ? JSON.stringify(body) : undefined,
  });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { /* not JSON */ }
  return { status: r.status, json, text };
}
const runsOf = (j) => (Array.isArray(j) ? j : j?.runs ?? j?.items ?? []);

// Pixels of the chart canvas whose colour is within `tol` of rgb (antialiasing blends edges).
function countPixels(page, selector, [r, g, b], tol = 40) {
  return page.evaluate(({ selector, r, g, b, tol }) => {
    const c = document.querySelector(`${selector} canvas`);
    if (!c) return -1;
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
    let n = 0;
    for (let i = 0; i < d.length; i += 4) {
      if (d[i + 3] > 150 && Math.abs(d[i] - r) <= tol && Math.abs(d[i + 1] - g) <= tol && Math.abs(d[i + 2] - b) <= tol) n++;
    }
    return n;
  }, { selector, r, g, b, tol });
}

const dataNum = (page, selector, key) => page.evaluate(({ selector, key }) => Number(document.querySelector(selector)?.dataset[key] ?? -1), { selector, key });

// ---- main ----
let ctx = null;
let userDir = null;
const watchdog = setTimeout(async () => {
  fail('dashboard_time_budget', `still running after ${TOTAL_BUDGET_MS / 1000} s`);
  try { await stopDaemon('SIGKILL'); } catch { /* exiting anyway */ }
  process.exit(1);
}, TOTAL_BUDGET_MS);

async function main() {
  port = await freePort();
  base = `http://127.0.0.1:${port}`;
  if (!(await check('daemon_starts', startDaemon))) return;

  userDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cdcd-chromium-'));
  ctx = await chromium.launchPersistentContext(userDir, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1280, height: 900 },
    deviceScaleFactor: 1,
  });
  const page = ctx.pages()[0] || (await ctx.newPage());
  page.setDefaultTimeout(15000);
  const consoleErrors = [];
  const pageErrors = [];
  let outage = false; // network errors while the daemon is down are expected
  let expect400 = false; // the validation test's rejected POST /runs is logged by Chromium
  page.on('console', (m) => {
    if (m.type() !== 'error' || outage) return;
    if (expect400 && /status of 400/.test(m.text()) && m.location().url === `${base}/runs`) return;
    consoleErrors.push(`${m.text()} (${m.location().url})`);
  });
  page.on('pageerror', (e) => pageErrors.push(e.message));
  page.on('requestfailed', (r) => { if (!outage && !r.failure()?.errorText.includes('ERR_ABORTED')) consoleErrors.push(`request failed: ${r.url()} ${r.failure()?.errorText}`); });
  const shot = (name, opts = {}) => page.screenshot({ path: path.join(ART, `dashboard-${name}.png`), ...opts });

  // 1. No runs: the empty state with its button.
  await page.goto(base + '/');
  await check('empty_state', async () => {
    await page.locator('#runs-empty').waitFor({ state: 'visible' });
    assert(/no runs yet/i.test(await page.locator('#runs-empty').innerText()), 'no "No runs yet" text');
    assert(await page.locator('#runs-empty button').isVisible(), 'no start button');
    assert((await page.locator('#conn').getAttribute('data-state')) === 'live', 'connection indicator not live');
    await shot('empty');
  });

  // 2. A short real run through the API appears in the list.
  let runId = null;
  await check('api_create_run', async () => {
    const r = await api('POST', '/runs', RUN_CONFIG);
    assert(r.status === 201, `POST /runs answered ${r.status}: ${r.text}`);
    runId = String(r.json.id);
  });
  if (!runId) return;
  const row = page.locator(`#runs-table tbody tr[data-id="${runId}"]`);
  await check('runs_list', async () => {
    await row.waitFor({ state: 'visible' });
    const state = await row.locator('.state').innerText();
    assert(['queued', 'running'].includes(state), `state shown is "${state}"`);
    assert(await page.locator('#runs-empty').isHidden(), 'empty state still shown');
    await waitFor(async () => /\d/.test(await row.locator('[data-col="step"]').innerText()), { what: 'a step number in the row' });
  });

  // 3. Open it: the loss chart draws points, and more arrive over SSE without a reload.
  await row.click();
  await page.waitForURL(`**/#/runs/${runId}`);
  await page.evaluate(() => { window.__noReload = true; });
  let firstPoints = 0;
  await check('loss_chart_points', async () => {
    firstPoints = await waitFor(async () => { const n = await dataNum(page, '#loss-chart', 'points'); return n >= 5 && n; },
      { timeout: 30000, what: 'loss points on the chart' });
    const px = await countPixels(page, '#loss-chart', [29, 78, 216]);
    assert(px > 40, `only ${px} pixels of the EMA curve's colour on the canvas`);
  });
  await check('live_updates_sse', async () => {
    await waitFor(async () => (await dataNum(page, '#loss-chart', 'points')) > firstPoints, { timeout: 20000, what: 'new points from the event stream' });
    assert(await page.evaluate(() => window.__noReload === true), 'the page reloaded');
    assert((await page.locator('#conn').getAttribute('data-state')) === 'live', 'event stream not live');
  });

  // 4. The entropy-vs-sigma scatter with the current Cauchy fit, and the fit history.
  await check('entropy_scatter_and_fit', async () => {
    await waitFor(async () => (await dataNum(page, '#entropy-chart', 'points')) >= 20 && (await dataNum(page, '#entropy-chart', 'fit')) === 1,
      { timeout: 40000, what: 'scatter points and a fit' });
    const red = await countPixels(page, '#entropy-chart', [220, 38, 38]);
    const dark = await countPixels(page, '#entropy-chart', [30, 41, 59], 60);
    assert(red > 40, `fit curve: only ${red} red pixels`);
    assert(dark > 20, `scatter: only ${dark} dark pixels`);
    assert(/μ=/.test(await page.locator('#fit-params').innerText()), 'fit parameters not shown');
    assert((await dataNum(page, '#fits-chart', 'fits')) >= 1, 'fit history is empty');
  });
  await page.locator('#loss-panel').scrollIntoViewIfNeeded();
  await sleep(400);
  await shot('run', { fullPage: true });

  // 5. Loss chart controls: log y, EMA slider, drag-zoom (refetches that range) and reset.
  await check('loss_controls', async () => {
    await page.locator('#loss-logy').check();
    await waitFor(async () => (await dataNum(page, '#loss-chart', 'logY')) === 1 && (await dataNum(page, '#loss-chart', 'points')) > 0, { what: 'log-y redraw' });
    await page.locator('#loss-logy').uncheck();
    await page.locator('#loss-ema').fill('0.5');
    assert((await page.locator('#loss-ema-out').innerText()) === '0.50', 'EMA value not shown');
    const over = await page.locator('#loss-chart .u-over').boundingBox();
    await page.mouse.move(over.x + over.width * 0.3, over.y + over.height / 2);
    await page.mouse.down();
    await page.mouse.move(over.x + over.width * 0.6, over.y + over.height / 2, { steps: 5 });
    await page.mouse.up();
    await waitFor(async () => /^Steps /.test(await page.locator('#loss-hint').innerText()), { what: 'the zoomed range to be fetched' });
    await page.locator('#loss-reset').click();
    await waitFor(async () => /^Drag/.test(await page.locator('#loss-hint').innerText()), { what: 'zoom reset' });
    await page.locator('#loss-ema').fill('0.9');
  });

  // 6. Generate: a story appears, with the progress bar driven by the SSE stream.
  await check('generate_story', async () => {
    await page.locator('#gen-form [name=prompt]').fill('once upon a time');
    await page.locator('#gen-form [name=n]').fill('1');
    await page.locator('#gen-form [name=steps]').fill('8');
    await page.locator('#gen-form [name=seed]').fill('3');
    await page.locator('#gen-submit').click();
    await page.locator('#gen-stories li').first().waitFor({ state: 'attached', timeout: 45000 });
    const text = (await page.locator('#gen-stories li').first().innerText()).trim();
    assert(text.length > 0, 'the story is empty');
    log(`story: ${text.slice(0, 100)}`);
    const bar = page.locator('#gen-progress');
    assert((await bar.getAttribute('data-step')) === (await bar.getAttribute('data-total')), 'progress bar did not reach the end');
    assert(await page.locator('#gen-error').isHidden(), `error shown: ${await page.locator('#gen-error').innerText()}`);
  });
  await check('samples_listed', async () => {
    await waitFor(async () => (await page.locator('#samples-list li').count()) >= 1, { what: 'the stored sample in "Earlier samples"' });
    const r = await api('GET', `/runs/${runId}/samples`);
    assert(r.status === 200, `GET samples: ${r.status}`);
  });

  // 7. Pause and resume from the runs list, checked through the API.
  const stateOf = async (id) => { const r = await api('GET', `/runs/${id}`); return r.json?.state; };
  await check('pause_resume_buttons', async () => {
    await row.locator('button[data-action=pause]').click();
    await waitFor(async () => (await stateOf(runId)) === 'paused', { what: 'state paused via the API' });
    await row.locator('button[data-action=resume]').waitFor();
    await row.locator('button[data-action=resume]').click();
    await waitFor(async () => ['running', 'queued'].includes(await stateOf(runId)), { what: 'state running via the API' });
  });

  // 8. The new-run form: a server validation error lands next to its field; a good config
  //    creates a run (seen through the API), which the Stop button then stops.
  await check('form_validation_error', async () => {
    await page.locator('#new-run-btn').click();
    await page.locator('#new-run').waitFor({ state: 'visible' });
    await page.locator('[data-path="train.batch_size"]').fill('0');
    expect400 = true;
    await page.locator('#run-submit').click();
    const slot = page.locator('[data-err="train.batch_size"]');
    await waitFor(async () => (await slot.innerText()).trim().length > 0, { what: 'an error next to Batch size' });
    assert(await page.locator('[data-path="train.batch_size"]').evaluate((e) => e.classList.contains('invalid')), 'field not marked invalid');
    log(`validation message: ${await slot.innerText()}`);
    await shot('form-error');
    expect400 = false;
  });
  let formRunId = null;
  await check('form_creates_run', async () => {
    if (await page.locator('#new-run').isHidden()) await page.locator('#new-run-btn').click();
    await page.locator('[data-path="name"]').fill('from-form');
    await page.locator('[data-path="train.batch_size"]').fill('2');
    await page.locator('[data-path="data.seq_len"]').fill('32');
    await page.locator('[data-path="train.max_steps"]').fill('400');
    await page.locator('[data-path="train.threads"]').fill('1');
    const cfg = JSON.parse(await page.locator('#run-json').inputValue());
    assert(cfg.train?.batch_size === 2 && cfg.name === 'from-form', `editor JSON not in sync: ${JSON.stringify(cfg)}`);
    await page.locator('#run-submit').click();
    await page.locator('#new-run').waitFor({ state: 'hidden' });
    const r = await waitFor(async () => runsOf((await api('GET', '/runs')).json).find((x) => x.name === 'from-form'), { what: 'the run in GET /runs' });
    formRunId = String(r.id);
    await page.waitForURL(`**/#/runs/${formRunId}`);
  });
  if (formRunId) {
    await check('stop_button', async () => {
      await page.locator('#run-actions button[data-action=stop]').click();
      await waitFor(async () => ['stopped', 'stopping', 'finished'].includes(await stateOf(formRunId)), { what: 'the form run stopped via the API' });
    });
  }

  // 9. Phone width: no sideways scrolling, the charts fit.
  await page.goto(`${base}/#/runs/${runId}`);
  await check('phone_layout', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await waitFor(async () => (await dataNum(page, '#loss-chart', 'points')) > 0, { what: 'the loss chart at phone width' });
    await sleep(500);
    const { sw, cw, chart } = await page.evaluate(() => ({
      sw: document.documentElement.scrollWidth, cw: document.documentElement.clientWidth,
      chart: document.querySelector('#loss-chart canvas').getBoundingClientRect().right,
    }));
    assert(sw <= cw + 1, `page is ${sw}px wide in a ${cw}px viewport`);
    assert(chart <= cw + 1, `loss chart ends at ${chart}px`);
    await page.evaluate(() => window.scrollTo(0, 0));
    await sleep(200);
    await shot('phone');
    await page.setViewportSize({ width: 1280, height: 900 });
  });

  await check('console_clean', async () => {
    assert(!pageErrors.length, `uncaught: ${pageErrors.join(' | ')}`);
    assert(!consoleErrors.length, `console: ${consoleErrors.join(' | ')}`);
  });

  // 10. The daemon goes away: an error state. It comes back: the page recovers by itself and
  //     the live stream resumes.
  outage = true;
  await check('error_state_when_unreachable', async () => {
    await stopDaemon('SIGTERM');
    await page.locator('#banner').waitFor({ state: 'visible', timeout: 15000 });
    assert(/unreachable/i.test(await page.locator('#banner').innerText()), 'banner does not say unreachable');
    await waitFor(async () => (await page.locator('#conn').getAttribute('data-state')) === 'offline', { what: 'offline indicator' });
    await shot('offline');
  });
  await check('reconnect_after_restart', async () => {
    await startDaemon();
    await page.locator('#banner').waitFor({ state: 'hidden', timeout: 20000 });
    await waitFor(async () => (await page.locator('#conn').getAttribute('data-state')) === 'live', { timeout: 20000, what: 'live indicator' });
    outage = false;
    await row.waitFor({ state: 'visible' });
    const before = await dataNum(page, '#loss-chart', 'points');
    const st = await stateOf(runId);
    if (st === 'running' || st === 'queued') {
      await waitFor(async () => (await dataNum(page, '#loss-chart', 'points')) > before, { timeout: 30000, what: 'new points after the restart' });
    } else {
      log(`run ${runId} is ${st} after the restart; not waiting for new points`);
    }
  });
  await check('console_clean_after_restart', async () => {
    assert(!pageErrors.length, `uncaught: ${pageErrors.join(' | ')}`);
    assert(!consoleErrors.length, `console: ${consoleErrors.join(' | ')}`);
  });

  for (const id of [runId, formRunId]) if (id) await api('POST', `/runs/${id}/stop`).catch(() => {});
}

try {
  await main();
} catch (e) {
  fail('dashboard_harness', e.stack || e.message);
} finally {
  try { await ctx?.close(); } catch { /* already gone */ }
  await stopDaemon('SIGTERM').catch(() => {});
  if (userDir) fs.rmSync(userDir, { recursive: true, force: true });
  clearTimeout(watchdog);
  log(`total ${((Date.now() - t0) / 1000).toFixed(1)} s`);
}
process.exit(failures ? 1 : 0);
