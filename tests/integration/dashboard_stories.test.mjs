// Browser test of the dashboard's Stories timeline and story-quality curves against a real
// cdcdd, in Debian's headless Chromium driven by playwright-core from web/node_modules.
// Started by tests/integration/test_dashboard.sh after web/tests/dashboard.test.mjs, with:
//   CDCD_DAEMON_CMD   JSON array: the daemon's argv without --listen (its own state dir)
//   CDCD_ART          folder for screenshots and the daemon's log
//   CHROMIUM          browser binary (default /usr/bin/chromium)
// A small run samples 3 stories every 25 steps (train.sample_every); the page must show the
// batches newest first with the prompt of the prompted story marked, draw the figures, take
// new batches from the event stream without a reload, and fit a phone's width.
// Prints "PASS name" / "FAIL name: detail" lines and exits 1 when anything failed.
import { spawn } from 'node:child_process';
import fs from 'node:fs';
import { createRequire } from 'node:module';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const { chromium } = createRequire(path.join(ROOT, 'web', 'package.json'))('playwright-core');
const ART = process.env.CDCD_ART || path.join(ROOT, 'tests/artifacts');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const DAEMON_CMD = JSON.parse(process.env.CDCD_DAEMON_CMD || '[]');
const BUDGET_MS = Number(process.env.CDCD_STORIES_BUDGET_MS || 100000);
const SAMPLE_EVERY = 25;
const SAMPLE_N = 3;
const RUN_CONFIG = {
  name: 'stories-live', seed: 3,
  model: { d_emb: 16, d_model: 32, n_heads: 2, n_layers: 1, cond_dim: 8, max_seq_len: 32 },
  data: { seq_len: 32 },
  train: { batch_size: 4, max_steps: 100000, threads: 1, checkpoint_every: 0, valid_every: 0,
    sample_every: SAMPLE_EVERY, sample_n: SAMPLE_N, sample_steps: 10 },
  optim: { warmup_steps: 5 },
  schedule: { refit_every: 20, window: 200 },
};
fs.mkdirSync(ART, { recursive: true });

let failures = 0;
const log = (...a) => console.log('  ', ...a);
const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
function assert(cond, msg) { if (!cond) throw new Error(msg); }

async function check(name, fn) {
  const t = Date.now();
  try {
    await fn();
    console.log(`PASS ${name}`);
    log(`${name}: ${((Date.now() - t) / 1000).toFixed(1)} s`);
    return true;
  } catch (e) {
    failures++;
    console.log(`FAIL ${name}: ${String(e && e.message ? e.message : e).split('\n')[0]}`);
    return false;
  }
}

async function waitFor(fn, { timeout = 15000, interval = 200, what = 'condition' } = {}) {
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

function freePort() {
  return new Promise((ok, ko) => {
    const s = net.createServer();
    s.listen(0, '127.0.0.1', () => { const { port } = s.address(); s.close(() => ok(port)); });
    s.on('error', ko);
  });
}

let daemon = null;
let base = '';
const logPath = path.join(ART, 'dashboard-stories-cdcdd.log');
fs.rmSync(logPath, { force: true });
const daemonLog = fs.openSync(logPath, 'a');

async function startDaemon(port) {
  assert(DAEMON_CMD.length, 'CDCD_DAEMON_CMD is not set');
  const [cmd, ...args] = DAEMON_CMD;
  daemon = spawn(cmd, [...args, '--listen', `127.0.0.1:${port}`], { stdio: ['ignore', daemonLog, daemonLog] });
  let exited = null;
  daemon.on('exit', (code, sig) => { exited = `exited (${code ?? sig})`; });
  await waitFor(async () => {
    if (exited) throw Object.assign(new Error(`cdcdd ${exited}`), { fatal: true });
    const r = await fetch(`${base}/ready`).catch(() => null);
    return r && r.status === 200;
  }, { timeout: 20000, what: 'cdcdd /ready' });
}

async function stopDaemon() {
  const proc = daemon;
  daemon = null;
  if (!proc || proc.exitCode !== null || proc.signalCode !== null) return;
  const done = new Promise((ok) => proc.on('exit', ok));
  proc.kill('SIGTERM');
  const t = setTimeout(() => proc.kill('SIGKILL'), 20000);
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

// Pixels of the chart canvas within `tol` of rgb.
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

const batchSteps = (page) => page.$$eval('#stories-timeline > li.batch', (els) => els.map((e) => Number(e.dataset.step)));

let ctx = null;
let userDir = null;
const watchdog = setTimeout(async () => {
  console.log(`FAIL stories_time_budget: still running after ${BUDGET_MS / 1000} s`);
  try { daemon?.kill('SIGKILL'); } catch { /* exiting anyway */ }
  process.exit(1);
}, BUDGET_MS);

async function main() {
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  if (!(await check('stories_daemon_starts', () => startDaemon(port)))) return;

  let runId = null;
  await check('stories_run_samples_batches', async () => {
    const r = await api('POST', '/runs', RUN_CONFIG);
    assert(r.status === 201, `POST /runs answered ${r.status}: ${r.text}`);
    runId = String(r.json.id);
    await waitFor(async () => (await api('GET', `/runs/${runId}/stories?stories=0`)).json?.count >= 2,
      { timeout: 40000, what: 'two periodic batches through the API' });
  });
  if (!runId) return;

  userDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cdcd-chromium-stories-'));
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
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(`${m.text()} (${m.location().url})`); });
  page.on('pageerror', (e) => errors.push(e.message));
  await page.goto(`${base}/#/runs/${runId}`);
  await page.evaluate(() => { window.__noReload = true; });

  await check('stories_timeline_renders', async () => {
    await waitFor(async () => (await batchSteps(page)).length >= 2, { what: 'two batches in the timeline' });
    const steps = await batchSteps(page);
    assert(steps.every((s, i) => s % SAMPLE_EVERY === 0 && (i === 0 || s < steps[i - 1])), `steps not newest first: ${steps}`);
    const first = page.locator('#stories-timeline > li.batch').first();
    const seeds = await first.locator('.batch-stories > li').evaluateAll((els) => els.map((e) => Number(e.dataset.seed)));
    assert(JSON.stringify(seeds) === JSON.stringify([1, 2, 3]), `seeds ${seeds}`);
    const mark = first.locator('.batch-stories > li').last().locator('mark.prompt');
    assert((await mark.count()) === 1, 'the prompted story has no highlighted prompt');
    assert((await mark.innerText()).trim() === 'once upon a time', `highlighted "${await mark.innerText()}"`);
    assert((await first.locator('.batch-stories > li').first().locator('mark').count()) === 0, 'an unconditional story is highlighted');
    const figs = await first.locator('.figs [data-figure]').evaluateAll((els) => els.map((e) => e.dataset.figure));
    for (const k of ['bigram_seen', 'trigram_seen', 'distinct2', 'repeat4', 'token_entropy']) assert(figs.includes(k), `figure ${k} not shown (${figs})`);
    assert(/% of the last 25 steps/.test(await first.locator('.meta').innerText()), 'the cost of the batch is not shown');
    assert(await page.locator('#stories-empty').isHidden(), 'the empty note is still shown');
  });

  await check('stories_quality_curves', async () => {
    await waitFor(async () => Number(await page.locator('#quality-chart').getAttribute('data-points')) >= 2, { what: 'figure points on the chart' });
    const blue = await countPixels(page, '#quality-chart', [37, 99, 235]);
    const amber = await countPixels(page, '#quality-chart', [202, 138, 4]);
    assert(blue > 10 && amber > 10, `curves: ${blue} bigram-blue and ${amber} entropy-amber pixels`);
    const loss = await page.locator('#loss-panel').boundingBox();
    const q = await page.locator('#quality-panel').boundingBox();
    assert(Math.abs(loss.y - q.y) < 2 && q.x > loss.x + loss.width - 1, 'the quality chart is not beside the loss chart');
  });

  await check('stories_live_over_sse', async () => {
    const top = (await batchSteps(page))[0];
    await waitFor(async () => (await batchSteps(page))[0] > top, { timeout: 30000, what: `a batch newer than step ${top}` });
    assert(await page.evaluate(() => window.__noReload === true), 'the page reloaded');
    const steps = await batchSteps(page);
    assert(new Set(steps).size === steps.length, `a step twice: ${steps}`);
  });

  // Pause for stable screenshots (the run's last batch stays on the page).
  await api('POST', `/runs/${runId}/pause`);
  await sleep(500);
  await check('stories_screenshot', async () => {
    const top = await page.locator('.loss-row').boundingBox();
    const panel = page.locator('#stories-panel');
    await panel.evaluate((el) => { el.querySelector('.timeline').style.maxHeight = '520px'; });
    const bottom = await panel.boundingBox();
    await page.setViewportSize({ width: 1280, height: Math.ceil(bottom.y + bottom.height + 40) });
    await sleep(600);
    const a = await page.locator('.loss-row').boundingBox();
    const b = await panel.boundingBox();
    await page.screenshot({ path: path.join(ART, 'dashboard-stories.png'), clip: { x: 0, y: Math.max(0, a.y - 8), width: 1280, height: b.y + b.height - a.y + 16 } });
    assert(top && bottom, 'panels not found');
  });

  await check('stories_phone_layout', async () => {
    await page.setViewportSize({ width: 390, height: 844 });
    await sleep(600);
    const { sw, cw, q } = await page.evaluate(() => ({
      sw: document.documentElement.scrollWidth, cw: document.documentElement.clientWidth,
      q: document.querySelector('#quality-chart canvas').getBoundingClientRect().right,
    }));
    assert(sw <= cw + 1, `page is ${sw}px wide in a ${cw}px viewport`);
    assert(q <= cw + 1, `quality chart ends at ${q}px`);
    assert(await page.locator('.fig-legend').isVisible(), 'no legend for the curves at phone width');
    await page.locator('#stories-panel').scrollIntoViewIfNeeded();
    await page.locator('#stories-panel').screenshot({ path: path.join(ART, 'dashboard-stories-phone.png') });
  });

  await check('stories_console_clean', async () => { assert(!errors.length, errors.join(' | ')); });
  await api('POST', `/runs/${runId}/stop`).catch(() => {});
}

try {
  await main();
} catch (e) {
  failures++;
  console.log(`FAIL stories_harness: ${e.stack || e.message}`);
} finally {
  try { await ctx?.close(); } catch { /* already gone */ }
  await stopDaemon().catch(() => {});
  if (userDir) fs.rmSync(userDir, { recursive: true, force: true });
  clearTimeout(watchdog);
}
process.exit(failures ? 1 : 0);
