// A stand-in for cdcdd's REST API with synthetic training data, for working on the dashboard
// without building or training anything:
//   node web/dev/mock-cdcdd.mjs [--listen 127.0.0.1:8090] [--web-dir web/dist]
// It follows the real daemon's routes and JSON (issue 7 / openapi.yaml) closely enough to
// draw every panel; the browser tests always run against the real bin/cdcdd.
import http from 'node:http';
import fs from 'node:fs';
import path from 'node:path';

const arg = (name, dflt) => { const i = process.argv.indexOf(name); return i > 0 ? process.argv[i + 1] : dflt; };
const port = Number(arg('--listen', '127.0.0.1:8090').split(':').pop());
const dist = path.resolve(arg('--web-dir', new URL('../dist', import.meta.url).pathname));
const stateDir = arg('--state-dir', '');
const runs = new Map();
let nextId = 1;
const clients = new Map(); // run id -> Set<res>

function rand(seed) { let s = seed >>> 0; return () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32); }
const F = (sig, f) => f.h * (Math.atan((sig - f.mu) / f.s) / Math.PI + 0.5) + f.o;

function makeRun(cfg) {
  const id = String(nextId++);
  const r = {
    id, name: cfg.name || `run-${id}`, state: 'running', pending: null, config: { preset: 'tiny', ...cfg },
    step: 0, max_steps: cfg.train?.max_steps ?? 20000, tokens: 0, tokens_per_s: null, loss: null,
    created_at: Date.now() / 1000, metrics: [], entropy: [], fits: [], samples: [], rng: rand(Number(id) * 7919),
  };
  runs.set(id, r);
  return r;
}

function publish(id, event, data) {
  for (const res of clients.get(id) || []) res.write(`event: ${event}\ndata: ${JSON.stringify(data)}\n\n`);
}

function trainStep(r) {
  const rnd = r.rng;
  r.step++;
  const t = r.step;
  const loss = 3 + 7 * Math.exp(-t / 300) + (rnd() - 0.5) * 0.8 * Math.exp(-t / 2000);
  const lr = 1e-3 * Math.min(1, t / 200) * (0.55 + 0.45 * Math.cos(Math.PI * Math.min(1, t / r.max_steps)));
  const row = { step: t, time: Date.now() / 1000, loss, lr, grad_norm: 0.5 + rnd() * 0.6 + 2 * Math.exp(-t / 100), tokens_per_s: 5000 + rnd() * 400, tokens: t * 4000 };
  if (t % 100 === 0) row.valid_loss = loss + 0.1;
  r.metrics.push(row);
  r.loss = loss; r.tokens = row.tokens; r.tokens_per_s = row.tokens_per_s;
  const truth = { mu: 2 + 3 * Math.exp(-t / 500), s: 1.5, h: 9, o: 0.3 };
  const ent = { run: Number(r.id), step: t, sigma: [], loss: [] };
  for (let i = 0; i < 16; i++) {
    const sigma = Math.exp(Math.log(0.1) + rnd() * (Math.log(200) - Math.log(0.1)));
    const l = Math.max(0, F(sigma, truth) + (rnd() - 0.5) * 1.2);
    r.entropy.push({ step: t, sigma, loss: l });
    ent.sigma.push(sigma); ent.loss.push(l);
  }
  publish(r.id, 'metrics', row);
  publish(r.id, 'entropy', ent);
  if (row.valid_loss !== undefined) publish(r.id, 'valid', { run: Number(r.id), step: t, valid_loss: row.valid_loss });
  if (t % 25 === 0) {
    const fit = { step: t, mu: truth.mu * (1 + (rnd() - 0.5) * 0.1), s: truth.s, h: truth.h, o: truth.o, rmse: 0.3, n: 500, ok: true };
    r.fits.push(fit);
    publish(r.id, 'fit', fit);
  }
  if (t >= r.max_steps) setState(r, 'finished');
}

function setState(r, state) { r.state = state; publish(r.id, 'state', view(r)); }

// --state-dir: runs survive a SIGTERM restart (as the daemon's store does).
const stateFile = stateDir ? path.join(stateDir, 'mock-runs.json') : '';
if (stateFile && fs.existsSync(stateFile)) {
  for (const r of JSON.parse(fs.readFileSync(stateFile, 'utf8'))) {
    runs.set(r.id, { ...r, rng: rand(Number(r.id) * 7919 + r.step) });
    nextId = Math.max(nextId, Number(r.id) + 1);
  }
}
process.on('SIGTERM', () => {
  if (stateFile) fs.writeFileSync(stateFile, JSON.stringify([...runs.values()].map(({ rng, ...r }) => r)));
  process.exit(0);
});

setInterval(() => { for (const r of runs.values()) if (r.state === 'running') for (let i = 0; i < 3; i++) if (r.state === 'running') trainStep(r); }, 100);

function view(r) {
  const { metrics, entropy, fits, samples, rng, ...rest } = r;
  return { ...rest, id: Number(r.id), fit: fits[fits.length - 1] || null };
}

function downsample(rows, n) {
  if (!n || rows.length <= n) return rows;
  const out = [rows[0]];
  const per = (rows.length - 2) / (n - 2);
  for (let b = 0; b < n - 2; b++) {
    const chunk = rows.slice(1 + Math.floor(b * per), 1 + Math.floor((b + 1) * per));
    if (!chunk.length) continue;
    const ls = chunk.map((x) => x.loss);
    const mid = chunk[chunk.length >> 1];
    out.push({ ...mid, loss: ls.reduce((a, c) => a + c, 0) / ls.length, loss_min: Math.min(...ls), loss_max: Math.max(...ls) });
  }
  out.push(rows[rows.length - 1]);
  return out;
}

function send(res, status, body) {
  res.writeHead(status, { 'Content-Type': 'application/json' });
  res.end(JSON.stringify(body));
}
const err = (res, status, code, message, field = '') => send(res, status, { error: { code, message, field } });

async function body(req) {
  let s = '';
  for await (const c of req) s += c;
  return s ? JSON.parse(s) : {};
}

const TYPES = { '.html': 'text/html', '.js': 'text/javascript', '.css': 'text/css', '.svg': 'image/svg+xml' };

http.createServer(async (req, res) => {
  const url = new URL(req.url, 'http://x');
  const p = url.pathname.split('/').filter(Boolean);
  const q = (k) => url.searchParams.get(k);
  try {
    if (p[0] === 'health' || p[0] === 'ready') return send(res, 200, { status: 'ok' });
    if (p[0] !== 'runs') {
      const file = path.join(dist, url.pathname === '/' ? 'index.html' : path.normalize(url.pathname));
      if (!file.startsWith(dist) || !fs.existsSync(file)) return err(res, 404, 'not_found', 'no such file');
      res.writeHead(200, { 'Content-Type': TYPES[path.extname(file)] || 'application/octet-stream' });
      return fs.createReadStream(file).pipe(res);
    }
    if (p.length === 1 && req.method === 'GET') return send(res, 200, { runs: [...runs.values()].map(view) });
    if (p.length === 1 && req.method === 'POST') {
      let cfg;
      try { cfg = await body(req); } catch { return err(res, 400, 'invalid_json', 'body is not JSON', ''); }
      const bs = cfg.train?.batch_size;
      if (bs !== undefined && !(Number.isInteger(bs) && bs >= 1 && bs <= 4096)) return err(res, 400, 'invalid_config', 'must be an integer in [1, 4096]', 'train.batch_size');
      if (cfg.preset && !['tiny', 'small', 'base', 'seed100m'].includes(cfg.preset)) return err(res, 400, 'invalid_config', 'unknown preset', 'preset');
      const r = makeRun(cfg);
      return send(res, 201, view(r));
    }
    const r = runs.get(p[1]);
    if (!r) return err(res, 404, 'not_found', 'no such run');
    const sub = p[2];
    if (!sub && req.method === 'GET') return send(res, 200, view(r));
    if (!sub && req.method === 'DELETE') {
      if (r.state === 'running') return err(res, 409, 'conflict', 'run is running');
      runs.delete(r.id); res.writeHead(204); return res.end();
    }
    if (['pause', 'resume', 'stop'].includes(sub) && req.method === 'POST') {
      setState(r, { pause: 'paused', resume: 'running', stop: 'stopped' }[sub]);
      return send(res, 200, view(r));
    }
    if (sub === 'metrics') {
      const a = q('after_step'), b = q('before_step');
      let rows = r.metrics.filter((m) => (a === null || m.step > Number(a)) && (b === null || m.step < Number(b)));
      rows = downsample(rows, Number(q('points')) || 0);
      const cols = { run: Number(r.id), total: r.metrics.length, points: rows.length };
      for (const k of ['step', 'time', 'loss', 'loss_min', 'loss_max', 'lr', 'grad_norm', 'tokens_per_s', 'valid_loss']) cols[k] = rows.map((x) => x[k] ?? null);
      return send(res, 200, cols);
    }
    if (sub === 'entropy') {
      const since = q('since_step');
      let rows = r.entropy.filter((e) => since === null || e.step > Number(since));
      const lim = Number(q('limit')) || 0;
      if (lim && rows.length > lim) rows = rows.slice(rows.length - lim);
      return send(res, 200, { run: Number(r.id), count: rows.length, step: rows.map((x) => x.step), sigma: rows.map((x) => x.sigma), loss: rows.map((x) => x.loss) });
    }
    if (sub === 'schedule') return send(res, 200, { run: Number(r.id), kind: 'cauchy', tmin: 0.1, tmax: 200, current: r.fits[r.fits.length - 1] || null, history: r.fits });
    if (sub === 'checkpoints') return send(res, 200, { checkpoints: [] });
    if (sub === 'events') {
      res.writeHead(200, { 'Content-Type': 'text/event-stream', 'Cache-Control': 'no-cache' });
      res.write(`event: state\ndata: ${JSON.stringify(view(r))}\n\n`);
      if (!clients.has(r.id)) clients.set(r.id, new Set());
      clients.get(r.id).add(res);
      const hb = setInterval(() => res.write(': heartbeat\n\n'), 15000);
      req.on('close', () => { clearInterval(hb); clients.get(r.id).delete(res); });
      return;
    }
    if (sub === 'samples' && req.method === 'GET') return send(res, 200, { samples: r.samples });
    if (sub === 'samples' && req.method === 'POST') {
      const b = await body(req);
      const n = b.n ?? 4, steps = b.steps ?? 50;
      const words = 'once upon a time there was a little girl named lily she liked to play in the park with her dog'.split(' ');
      const rnd = rand(b.seed ?? 1);
      const texts = Array.from({ length: n }, () => `${b.prompt ? `${b.prompt} ` : ''}${Array.from({ length: 30 }, () => words[Math.floor(rnd() * words.length)]).join(' ')}.`);
      const stored = texts.map((text, i) => ({ id: r.samples.length + i + 1, step: r.step, text, params: b, created_at: Date.now() / 1000 }));
      const result = { run: Number(r.id), step: r.step, weights: 'live', params: b, samples: texts.map((text) => ({ text })) };
      const finish = () => { r.samples.unshift(...stored.reverse()); publish(r.id, 'sample', result); };
      if (!b.stream) { finish(); return send(res, 200, result); }
      res.writeHead(200, { 'Content-Type': 'text/event-stream' });
      for (let s = 1; s <= steps; s++) {
        await new Promise((ok) => setTimeout(ok, 20));
        res.write(`event: progress\ndata: ${JSON.stringify({ step: s, n_steps: steps, preview: texts[0].slice(0, Math.floor((texts[0].length * s) / steps)) })}\n\n`);
      }
      finish();
      res.write(`event: done\ndata: ${JSON.stringify(result)}\n\n`);
      return res.end();
    }
    return err(res, 404, 'not_found', 'no such route');
  } catch (e) {
    return err(res, 500, 'internal', String(e));
  }
}).listen(port, '127.0.0.1', () => console.log(`mock cdcdd on http://127.0.0.1:${port}/ serving ${dist}`));
