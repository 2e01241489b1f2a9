// The cdcdd REST API as the dashboard uses it: fetch wrappers, an SSE reader for POST
// responses, a self-healing EventSource, and normalisers that turn the daemon's JSON into the
// shapes the views draw (column arrays for charts).

const TOKEN_KEY = 'cdcdd.token';

export class ApiError extends Error {
  constructor(status, code, message, field = '') {
    super(message);
    this.status = status; // 0 = the daemon could not be reached
    this.code = code;
    this.field = field;
  }
}

export function getToken() {
  try { return localStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; }
}
export function setToken(t) {
  try { t ? localStorage.setItem(TOKEN_KEY, t) : localStorage.removeItem(TOKEN_KEY); } catch { /* private mode */ }
  sessionUntil = 0;
}

// EventSource cannot send an Authorization header, and the token never goes into a URL: with
// a token set, POST /session first; its HttpOnly, SameSite=Strict cookie authenticates the
// stream (and any GET) until it expires, a minute before which it is renewed.
let sessionUntil = 0;
export async function ensureSession() {
  if (!getToken() || Date.now() < sessionUntil) return;
  const s = await json('POST', '/session');
  sessionUntil = Date.now() + Math.max(0, ((s && s.expires_in) || 0) - 60) * 1000;
}

function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

async function request(method, path, body, { signal, accept } = {}) {
  const headers = { Accept: accept || 'application/json' };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`; // reads need it too under auth = all
  let payload;
  // every write says JSON, with or without a body: the daemon refuses others (CSRF)
  if (method !== 'GET') headers['Content-Type'] = 'application/json';
  if (body !== undefined) payload = typeof body === 'string' ? body : JSON.stringify(body);
  let res;
  try {
    res = await fetch(path, { method, headers, body: payload, signal, cache: 'no-store' });
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'unreachable', 'cannot reach cdcdd');
  }
  if (!res.ok) throw await errorFrom(res);
  return res;
}

async function errorFrom(res) {
  let j = null;
  try { j = await res.json(); } catch { /* not JSON */ }
  const e = j && j.error ? j.error : {};
  return new ApiError(res.status, e.code || `http_${res.status}`, e.message || res.statusText || `HTTP ${res.status}`,
    e.field || '');
}

async function json(method, path, body, opts) {
  const res = await request(method, path, body, opts);
  if (res.status === 204) return null;
  const text = await res.text();
  return text ? JSON.parse(text) : null;
}

const enc = encodeURIComponent;

// ---- endpoints ----
export const health = () => json('GET', '/health');
export const listRuns = async () => listOf(await json('GET', '/runs'), 'runs').map(normRun);
export const getRun = async (id) => normRun(await json('GET', `/runs/${enc(id)}`));
export const createRun = (config) => json('POST', '/runs', config);
export const runAction = (id, verb) => json('POST', `/runs/${enc(id)}/${verb}`);
export const deleteRun = (id) => json('DELETE', `/runs/${enc(id)}`);
export const getMetrics = async (id, { after, before, points } = {}, opts) =>
  normMetrics(await json('GET', `/runs/${enc(id)}/metrics${query({ after_step: after, before_step: before, points })}`,
    undefined, opts));
export const getEntropy = async (id, { since, limit } = {}) =>
  normEntropy(await json('GET', `/runs/${enc(id)}/entropy${query({ since_step: since, limit })}`));
export const getSchedule = async (id) => normSchedule(await json('GET', `/runs/${enc(id)}/schedule`));
// kind: 'request' (POST /samples), 'periodic' (the stories sampled during training) or both
export const listSamples = async (id, { kind } = {}) =>
  listOf(await json('GET', `/runs/${enc(id)}/samples${query({ kind })}`), 'samples').map(normSample);
// The periodic story batches, newest first; stories: 0 = figures only (for the curves).
export const getStories = async (id, { limit, before, stories } = {}) =>
  listOf(await json('GET', `/runs/${enc(id)}/stories${query({ limit, before_step: before, stories })}`), 'batches')
    .map(normStoryBatch).filter((b) => b.step !== null);
export const listCheckpoints = async (id) => listOf(await json('GET', `/runs/${enc(id)}/checkpoints`), 'checkpoints');

// POST /runs/{id}/samples with "stream": true. onEvent(type, data) is called for each SSE event
// (progress per denoising step, then the stories); a plain JSON answer is reported as one
// 'result' event. Resolves when the stream ends.
export async function generate(id, params, onEvent, signal) {
  const res = await request('POST', `/runs/${enc(id)}/samples`, { ...params, stream: true },
    { signal, accept: 'text/event-stream, application/json' });
  const type = res.headers.get('Content-Type') || '';
  if (!type.includes('text/event-stream')) {
    onEvent('result', await res.json());
    return;
  }
  await readSSE(res.body, (ev, data) => {
    let parsed = data;
    try { parsed = JSON.parse(data); } catch { /* plain text */ }
    onEvent(ev, parsed);
  });
}

// Server-Sent Events from a fetch body: blocks separated by a blank line, "event:" and
// "data:" fields, ":" comments (heartbeats) ignored.
export async function readSSE(body, onEvent) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  const dispatch = (block) => {
    let type = 'message';
    const data = [];
    for (const line of block.split('\n')) {
      if (!line || line.startsWith(':')) continue;
      const c = line.indexOf(':');
      const field = c < 0 ? line : line.slice(0, c);
      let value = c < 0 ? '' : line.slice(c + 1);
      if (value.startsWith(' ')) value = value.slice(1);
      if (field === 'event') type = value;
      else if (field === 'data') data.push(value);
    }
    if (data.length) onEvent(type, data.join('\n'));
  };
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buf += value.replace(/\r\n?/g, '\n');
    let i;
    while ((i = buf.indexOf('\n\n')) >= 0) {
      dispatch(buf.slice(0, i));
      buf = buf.slice(i + 2);
    }
  }
  if (buf.trim()) dispatch(buf);
}

// An EventSource that comes back by itself: the browser retries dropped connections, and when
// it gives up (the daemon answered an error while restarting) this opens a new one with
// backoff. onStatus('live' | 'reconnecting'); handlers.reconnected() after a gap, so the view
// can fetch what it missed.
export class RunEvents {
  constructor(id, handlers, onStatus) {
    this.url = `/runs/${enc(id)}/events`;
    this.handlers = handlers;
    this.onStatus = onStatus || (() => {});
    this.delay = 1000;
    this.gap = false;
    this.closed = false;
    this.open();
  }

  async open() {
    if (this.closed) return;
    try {
      await ensureSession();
    } catch (e) {
      if (e.status === 401 || e.status === 403) document.dispatchEvent(new CustomEvent('cdcd-auth-needed'));
    }
    if (this.closed) return;
    const es = (this.es = new EventSource(this.url));
    for (const type of Object.keys(this.handlers).filter((k) => k !== 'reconnected')) {
      es.addEventListener(type, (e) => {
        let data;
        try { data = JSON.parse(e.data); } catch { return; }
        this.handlers[type]?.(data);
      });
    }
    es.onopen = () => {
      this.delay = 1000;
      this.onStatus('live');
      if (this.gap) {
        this.gap = false;
        this.handlers.reconnected?.();
      }
    };
    es.onerror = () => {
      this.gap = true;
      this.onStatus('reconnecting');
      if (es.readyState === EventSource.CLOSED) {
        es.close();
        clearTimeout(this.timer);
        this.timer = setTimeout(() => this.open(), this.delay);
        this.delay = Math.min(this.delay * 2, 8000);
      }
    };
  }

  // Called when the daemon is known to be back (the runs poll succeeded): retry now.
  kick() {
    if (this.closed || !this.es || this.es.readyState === EventSource.OPEN) return;
    this.es.close();
    clearTimeout(this.timer);
    this.delay = 1000;
    this.open();
  }

  close() {
    this.closed = true;
    clearTimeout(this.timer);
    this.es?.close();
  }
}

// ---- normalisers: tolerate an array or an object that wraps one ----
function listOf(j, key) {
  if (Array.isArray(j)) return j;
  if (j && Array.isArray(j[key])) return j[key];
  if (j && Array.isArray(j.items)) return j.items;
  if (j && Array.isArray(j.data)) return j.data;
  return [];
}

const num = (v) => (v === null || v === undefined || v === '' || !Number.isFinite(Number(v)) ? null : Number(v));

// Seconds since the epoch from ISO text, seconds or milliseconds.
export function toSeconds(v) {
  if (v === null || v === undefined || v === '') return null;
  if (typeof v === 'string' && !/^[\d.]+$/.test(v)) {
    const ms = Date.parse(v);
    return Number.isFinite(ms) ? ms / 1000 : null;
  }
  const n = Number(v);
  if (!Number.isFinite(n)) return null;
  return n > 1e11 ? n / 1000 : n;
}

// A schedule fit. Cauchy fits carry mu, s, h, o; the current fit also carries knots: F at
// 101 log-spaced sigmas of [tmin, tmax] (the only description of a piecewise-linear fit).
export function normFit(f) {
  if (!f || typeof f !== 'object') return null;
  const mu = num(f.mu), s = num(f.s), h = num(f.h), o = num(f.o);
  const knots = Array.isArray(f.knots) && f.knots.length > 1 && f.knots.every((v) => num(v) !== null) ? f.knots.map(Number) : null;
  const cauchy = mu !== null && s !== null && s > 0 && h !== null && o !== null;
  if (!cauchy && !knots) return null;
  return { kind: f.kind || 'cauchy', mu, s, h, o, knots, cauchy, step: num(f.step), rmse: num(f.rmse), n: num(f.n), ok: f.ok === undefined ? true : !!f.ok };
}

export function normRun(r) {
  r = r || {};
  const cfg = r.config && typeof r.config === 'object' ? r.config : null;
  const ck = r.checkpoint || r.last_checkpoint || null;
  return {
    id: String(r.id),
    name: r.name || cfg?.name || '',
    state: r.state || 'unknown',
    pending: r.pending || '', // "pause" / "stop" while the trainer checkpoints
    step: num(r.step) ?? 0,
    maxSteps: num(r.max_steps ?? cfg?.train?.max_steps),
    tokens: num(r.tokens),
    tokensPerS: num(r.tokens_per_s ?? r.tps),
    loss: num(r.last_loss ?? r.loss),
    validLoss: num(r.valid_loss ?? r.last_valid_loss),
    created: toSeconds(r.created_at ?? r.created),
    started: toSeconds(r.started_at ?? r.started),
    finished: toSeconds(r.finished_at ?? r.finished),
    error: r.error || '',
    fit: normFit(r.fit ?? r.schedule_fit ?? r.schedule),
    checkpoint: ck && typeof ck === 'object' ? { step: num(ck.step), bytes: num(ck.bytes), sha256: ck.sha256 || '' } : null,
    nonfinite: !!r.nonfinite,
    preset: r.preset || cfg?.preset || '',
    config: cfg,
  };
}

// One metrics row (a GET /metrics row or an SSE "metrics" event) as flat numbers.
export function normMetricRow(p) {
  return {
    step: num(p.step),
    time: toSeconds(p.time ?? p.t ?? p.wall_time ?? p.created_at),
    loss: p.nonfinite ? null : num(p.loss ?? p.loss_mean ?? p.mean),
    lossMin: num(p.loss_min ?? p.min),
    lossMax: num(p.loss_max ?? p.max),
    lr: num(p.lr),
    gradNorm: num(p.grad_norm),
    tokensPerS: num(p.tokens_per_s ?? p.tps),
    validLoss: num(p.valid_loss),
    tokens: num(p.tokens),
  };
}

// Column arrays sorted by step: {step, time, loss, lossMin, lossMax, lr, gradNorm, tokensPerS, validLoss}.
// cdcdd answers columns (step[], time[], loss[], ...); a list of row objects is read too.
export function normMetrics(j) {
  const cols = emptySeries();
  if (j && Array.isArray(j.step)) {
    const col = (k) => (Array.isArray(j[k]) ? j[k] : []);
    const map = { time: 'time', loss: 'loss', lossMin: 'loss_min', lossMax: 'loss_max', lr: 'lr', gradNorm: 'grad_norm', tokensPerS: 'tokens_per_s', validLoss: 'valid_loss' };
    const nonfinite = col('nonfinite');
    for (let i = 0; i < j.step.length; i++) {
      const step = num(j.step[i]);
      if (step === null) continue;
      cols.step.push(step);
      for (const [k, src] of Object.entries(map)) cols[k].push(num(col(src)[i]));
      if (nonfinite[i] === true || nonfinite[i] === 1) cols.loss[cols.loss.length - 1] = null;
    }
  } else {
    let rows = listOf(j, 'points');
    if (!rows.length) rows = listOf(j, 'metrics');
    for (const r of rows.map(normMetricRow).filter((x) => x.step !== null).sort((a, b) => a.step - b.step)) pushRow(cols, r);
  }
  return cols;
}

export function emptySeries() {
  return { step: [], time: [], loss: [], lossMin: [], lossMax: [], lr: [], gradNorm: [], tokensPerS: [], validLoss: [] };
}

export function pushRow(cols, r) {
  for (const k of Object.keys(cols)) cols[k].push(r[k] ?? null);
}

// {step, sigma, loss} column arrays, oldest first.
export function normEntropy(j) {
  let rows = listOf(j, 'samples');
  if (!rows.length) rows = listOf(j, 'entropy');
  const out = { step: [], sigma: [], loss: [] };
  if (!rows.length && j && Array.isArray(j.sigma)) {
    j.sigma.forEach((s, i) => { out.step.push(num(j.step?.[i]) ?? 0); out.sigma.push(num(s)); out.loss.push(num(j.loss?.[i])); });
    return out;
  }
  for (const r of rows) {
    const sigma = num(Array.isArray(r) ? r[1] : r.sigma);
    const loss = num(Array.isArray(r) ? r[2] : r.loss ?? r.entropy);
    if (sigma === null || loss === null || sigma <= 0) continue;
    out.step.push(num(Array.isArray(r) ? r[0] : r.step) ?? 0);
    out.sigma.push(sigma);
    out.loss.push(loss);
  }
  return out;
}

// {current: fit|null, history: [fit...] oldest first}
export function normSchedule(j) {
  j = j || {};
  const current = normFit(j.current ?? j.fit ?? (j.mu !== undefined ? j : null));
  const history = listOf(j, 'history').map(normFit).filter(Boolean).sort((a, b) => (a.step ?? 0) - (b.step ?? 0));
  return { current, history, kind: j.kind || 'cauchy', tmin: num(j.tmin), tmax: num(j.tmax) };
}

export function normSample(s) {
  s = s || {};
  const params = s.params && typeof s.params === 'object' ? s.params : s.request && typeof s.request === 'object' ? s.request : {};
  return {
    id: s.id !== undefined ? String(s.id) : '',
    step: num(s.step),
    text: typeof s.text === 'string' ? s.text : Array.isArray(s.texts) ? s.texts.join('\n\n') : '',
    prompt: s.prompt ?? params.prompt ?? '',
    params,
    created: toSeconds(s.created_at ?? s.created),
  };
}

// The quality figures of a periodic batch (core/textstats.h), as GET /stories names them.
export const FIGURE_KEYS = ['bigram_seen', 'trigram_seen', 'distinct1', 'distinct2', 'repeat4', 'dangling',
  'unigram_kl', 'token_entropy', 'words_per_story', 'sentences_per_story', 'words_per_sentence'];

// One periodic batch (GET /runs/{id}/stories or a "stories" event): the step, its cost, its
// figures (null when the daemon had no reference) and its stories (seed, prompt, text).
export function normStoryBatch(b) {
  b = b || {};
  let figures = null;
  if (b.figures && typeof b.figures === 'object') {
    figures = {};
    for (const k of FIGURE_KEYS) figures[k] = num(b.figures[k]);
  }
  const stories = (Array.isArray(b.stories) ? b.stories : []).map((x) => ({
    seed: num(x?.seed),
    prompt: typeof x?.prompt === 'string' && x.prompt ? x.prompt : '',
    text: typeof x?.text === 'string' ? x.text : '',
  }));
  return {
    step: num(b.step),
    created: toSeconds(b.created_at),
    n: num(b.n) ?? stories.length,
    steps: num(b.steps),
    seconds: num(b.seconds),
    share: num(b.share),
    intervalSteps: num(b.interval_steps),
    figures,
    stories,
  };
}
