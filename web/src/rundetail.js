// One run's page: header and actions, the loss / lr / grad-norm / tokens-per-s charts, the
// story-quality curves beside the loss, the entropy-vs-sigma scatter with its Cauchy fit and
// fit history, the timeline of the stories sampled during training, the generate panel and
// the stored samples. Live data arrives over the run's SSE stream and is appended.
import * as api from './api.js';
import { EntropyChart, FitHistoryChart, LossChart, MetricChart, StoryFiguresChart, STORY_FIGURES, COLORS } from './charts.js';
import { $, h, setText, fmtInt, fmtNum, fmtDuration, now, frameThrottle, actionsFor, ACTION_LABEL } from './util.js';

const MAX_ENTROPY_POINTS = 4000; // most recent (sigma, loss) samples kept in the scatter
const STORY_BATCHES_SHOWN = 50; // newest periodic batches in the timeline (their stories)
const STORY_CURVE_BATCHES = 1000; // batches fetched (figures only) for the quality curves
const TERMINAL = new Set(['finished', 'done', 'completed', 'stopped', 'failed', 'cancelled']);

export class RunDetail {
  // ctx: { onAction(run, verb), onRunChanged(), onStatus(state) }
  constructor(root, run, ctx) {
    this.root = root;
    this.run = run;
    this.ctx = ctx;
    this.ac = new AbortController(); // removes every listener this view added
    const on = (el, ev, fn) => el.addEventListener(ev, fn, { signal: this.ac.signal });

    this.series = api.emptySeries();
    this.entropy = { step: [], sigma: [], loss: [] };
    this.fits = [];
    this.fit = null;
    this.samples = [];
    this.batches = new Map(); // step -> periodic batch with its stories (the timeline)
    this.curve = new Map(); // step -> periodic batch, figures only (the quality curves)
    this.genAbort = null;
    this.loaded = false;

    root.hidden = false;
    this.loss = new LossChart($('#loss-chart', root), { onZoom: (a, b) => this.zoomTo(a, b) });
    this.lr = new MetricChart($('#lr-chart', root), { label: 'lr', color: COLORS.lr, key: 'lr' });
    this.grad = new MetricChart($('#grad-chart', root), { label: 'grad norm', color: COLORS.grad, key: 'gradNorm' });
    this.tps = new MetricChart($('#tps-chart', root), { label: 'tokens/s', color: COLORS.tps, key: 'tokensPerS' });
    this.entropyChart = new EntropyChart($('#entropy-chart', root));
    this.fitsChart = new FitHistoryChart($('#fits-chart', root));
    this.quality = new StoryFiguresChart($('#quality-chart', root));
    const legend = h('div', { class: 'fig-legend' }, STORY_FIGURES.map((f) =>
      h('span', {}, h('i', { style: `background:${f.color}` }), f.label)));
    $('#quality-chart', root).after(legend);
    this.qualityLegend = legend;
    this.redraw = frameThrottle(() => this.drawSeries(), 250);

    // loss controls keep their settings from run to run
    const logy = $('#loss-logy', root);
    const ema = $('#loss-ema', root);
    const xmode = $('#loss-x', root);
    this.loss.smoothing = Number(ema.value);
    if (logy.checked) this.loss.logY = true;
    if (xmode.value !== 'step') this.loss.xMode = xmode.value;
    if (this.loss.logY || this.loss.xMode !== 'step') this.loss.build();
    setText($('#loss-ema-out', root), Number(ema.value).toFixed(2));
    on(logy, 'change', () => this.loss.setLogY(logy.checked));
    on(xmode, 'change', () => this.loss.setXMode(xmode.value));
    on(ema, 'input', () => { setText($('#loss-ema-out', root), Number(ema.value).toFixed(2)); this.loss.setSmoothing(Number(ema.value)); });
    on($('#loss-reset', root), 'click', () => this.loss.reset());
    on($('#gen-form', root), 'submit', (e) => { e.preventDefault(); this.generate(); });

    this.resetPanels();
    this.update(run);
    this.load();
    // Events that arrive while load() runs wait for it, then only what is newer is applied.
    const later = (fn) => (d) => (this.loaded ? fn(d) : this.early.push(() => fn(d)));
    this.early = [];
    this.events = new api.RunEvents(run.id, {
      state: (d) => this.onState(d),
      metrics: later((d) => this.onMetrics(d)),
      valid: later((d) => this.onValid(d)),
      entropy: later((d) => this.onEntropy(d)),
      fit: later((d) => this.onFit(d)),
      checkpoint: later((d) => this.onCheckpoint(d)),
      sample: later((d) => { this.addLocalSamples(d); this.refreshSamples(); }),
      stories: later((d) => this.onStories(d)),
      reconnected: () => this.load(), // the daemon restarted: re-read everything
    }, (s) => ctx.onStatus(s));
    this.redrawEntropy = frameThrottle(() => this.drawEntropy(), 500);
    this.ageTimer = setInterval(() => this.renderStats(), 1000);
  }

  destroy() {
    this.ac.abort();
    this.events.close();
    this.genAbort?.abort();
    clearInterval(this.ageTimer);
    clearTimeout(this.samplesTimer);
    for (const c of [this.loss, this.lr, this.grad, this.tps, this.entropyChart, this.fitsChart, this.quality]) c.destroy();
    this.qualityLegend.remove();
    this.root.hidden = true;
  }

  resetPanels() {
    const r = this.root;
    setText($('#fit-params', r), 'no fit yet');
    setText($('#fits-count', r), '');
    $('#fits-table tbody', r).textContent = '';
    $('#gen-stories', r).textContent = '';
    $('#gen-progress', r).hidden = true;
    $('#gen-preview', r).hidden = true;
    $('#gen-error', r).hidden = true;
    $('#samples-list', r).textContent = '';
    $('#samples-empty', r).hidden = false;
    $('#stories-timeline', r).textContent = '';
    $('#stories-empty', r).hidden = false;
    setText($('#stories-empty', r), 'No stories yet.');
    setText($('#stories-note', r), '');
    setText($('#quality-note', r), '');
    setText($('#run-config', r), '');
    $('#checkpoints', r).textContent = '';
    $('#run-actions', r).textContent = '';
    $('#run-stats', r).dataset.text = '';
  }

  pointsWanted() {
    return Math.max(300, Math.min(2000, Math.round(this.loss.width() * 1.5)));
  }

  // ---- loading ----
  // Reads everything (on open, and after the daemon came back); events that arrive meanwhile
  // are applied afterwards, skipping what the answers already hold.
  async load() {
    this.loaded = false;
    const id = this.run.id;
    const settle = (p) => p.then((v) => ({ v }), (e) => ({ e }));
    const [m, ent, sch, smp, full, ck, sto, cur] = await Promise.all([
      settle(api.getMetrics(id, { points: this.pointsWanted() })),
      settle(api.getEntropy(id, { limit: MAX_ENTROPY_POINTS })),
      settle(api.getSchedule(id)),
      settle(api.listSamples(id, { kind: 'request' })),
      settle(api.getRun(id)),
      settle(api.listCheckpoints(id)),
      settle(api.getStories(id, { limit: STORY_BATCHES_SHOWN })),
      settle(api.getStories(id, { limit: STORY_CURVE_BATCHES, stories: 0 })),
    ]);
    if (this.ac.signal.aborted) return;
    if (m.v) { this.series = m.v; this.drawSeries(); }
    if (ent.v) this.entropy = trimEntropy(ent.v);
    if (sch.v) {
      this.fits = sch.v.history.slice();
      this.fit = sch.v.current || this.fits[this.fits.length - 1] || null;
      if (sch.v.tmin > 0 && sch.v.tmax > sch.v.tmin) this.trange = [sch.v.tmin, sch.v.tmax];
      if (this.fit && !this.fits.some((f) => f.step === this.fit.step)) this.fits.push(this.fit);
    }
    this.drawEntropy();
    if (smp.v) { this.samples = smp.v; this.renderSamples(); }
    if (full.v) { this.update(full.v); setText($('#run-config', this.root), JSON.stringify(full.v.config ?? {}, null, 2)); }
    if (ck.v) this.renderCheckpoints(ck.v);
    if (sto.v) this.batches = new Map(sto.v.map((b) => [b.step, b]));
    if (cur.v) this.curve = new Map(cur.v.map((b) => [b.step, b]));
    this.renderStories();
    this.loaded = true;
    const early = this.early.splice(0);
    for (const fn of early) fn();
  }

  kick() { this.events.kick(); }

  lastStep() {
    const s = this.series.step;
    return s.length ? s[s.length - 1] : -Infinity;
  }

  // ---- metrics ----
  onMetrics(d) {
    const rows = (Array.isArray(d) ? d : [d]).map(api.normMetricRow).filter((r) => r.step !== null && r.step > this.lastStep());
    if (!rows.length) return;
    const cols = api.emptySeries();
    for (const r of rows) api.pushRow(cols, r);
    const s = this.series;
    for (const k of Object.keys(s)) s[k].push(...cols[k]);
    this.redraw();
    if (s.step.length > 3 * this.pointsWanted()) this.refreshOverview();
    const n = rows[rows.length - 1];
    this.run = { ...this.run, step: n.step, loss: n.loss, tokensPerS: n.tokensPerS ?? this.run.tokensPerS,
      tokens: n.tokens ?? this.run.tokens };
    this.ctx.onRunChanged(this.run);
    this.renderStats();
  }

  // A validation loss belongs to a step the series already holds.
  onValid(d) {
    const step = Number(d.step);
    const v = Number(d.valid_loss);
    if (!Number.isFinite(v)) return;
    const s = this.series;
    for (let i = s.step.length - 1; i >= 0 && s.step[i] >= step; i--) {
      if (s.step[i] === step) { s.validLoss[i] = v; this.redraw(); break; }
    }
    this.run = { ...this.run, validLoss: v };
    this.renderStats();
  }

  onCheckpoint(d) {
    this.run = { ...this.run, checkpoint: { step: Number(d.step), bytes: Number(d.bytes), sha256: d.sha256 || '' } };
    this.renderStats();
    api.listCheckpoints(this.run.id).then((c) => this.renderCheckpoints(c), () => {});
  }

  // The series grew past what the chart needs: ask the daemon to downsample again.
  refreshOverview() {
    if (this.refreshing) return;
    this.refreshing = true;
    api.getMetrics(this.run.id, { points: this.pointsWanted() })
      .then((m) => { if (!this.ac.signal.aborted && m.step.length) { this.series = m; this.redraw(); } })
      .catch(() => {})
      .finally(() => { this.refreshing = false; });
  }

  drawSeries() {
    if (this.ac.signal.aborted) return;
    this.loss.setOverview(this.series);
    this.lr.setSeries(this.series);
    this.grad.setSeries(this.series);
    this.tps.setSeries(this.series);
  }

  // A zoomed range: fetch it at full resolution (within the points budget).
  async zoomTo(a, b) {
    this.zoomAbort?.abort();
    if (a === null) { setText($('#loss-hint', this.root), 'Drag across the chart to zoom; double-click or "Reset zoom" to see the whole run.'); return; }
    const ac = (this.zoomAbort = new AbortController());
    try {
      const detail = await api.getMetrics(this.run.id, { after: Math.max(0, a - 1), before: b + 1, points: this.pointsWanted() }, { signal: ac.signal });
      if (!ac.signal.aborted && detail.step.length) {
        this.loss.setDetail(detail);
        setText($('#loss-hint', this.root), `Steps ${fmtInt(a)}–${fmtInt(b)}: ${fmtInt(detail.step.length)} points. Double-click or "Reset zoom" to zoom out.`);
      }
    } catch { /* keep the coarse view */ }
  }

  // ---- entropy and fits ----
  // One training step's (sigma, loss) pairs.
  onEntropy(d) {
    const step = Number(d.step);
    const e = this.entropy;
    if (!Array.isArray(d.sigma) || !Array.isArray(d.loss) || (e.step.length && step <= e.step[e.step.length - 1])) return;
    for (let i = 0; i < d.sigma.length; i++) {
      const sg = Number(d.sigma[i]), l = Number(d.loss[i]);
      if (!(sg > 0) || !Number.isFinite(l)) continue;
      e.step.push(step); e.sigma.push(sg); e.loss.push(l);
    }
    this.entropy = trimEntropy(e);
    this.redrawEntropy();
  }

  onFit(d) {
    const f = api.normFit(d);
    if (!f || !f.ok) return; // a failed refit keeps the previous parameters
    this.fit = f;
    this.fits = this.fits.filter((x) => x.step !== f.step);
    this.fits.push({ ...f, knots: null }); // the history holds parameters only, like GET /schedule
    this.drawEntropy();
  }

  drawEntropy() {
    if (this.ac.signal.aborted) return;
    this.entropyChart.setData(this.entropy, this.fit, this.trange);
    const sig = this.entropy.sigma;
    let range = this.trange || null;
    if (!range && sig.length) range = [Math.min(...sig), Math.max(...sig)];
    this.fitsChart.setFits(this.fits, range, this.trange);
    const f = this.fit;
    const when = f && f.step !== null ? ` (step ${fmtInt(f.step)}${f.rmse !== null ? `, rmse ${fmtNum(f.rmse, 3)}` : ''})` : '';
    let text = `no fit yet · ${fmtInt(sig.length)} samples`;
    if (f && f.cauchy) {
      text = `F(σ) = h·(atan((σ−μ)/s)/π + ½) + o   μ=${fmtNum(f.mu)}  s=${fmtNum(f.s)}  h=${fmtNum(f.h)}  o=${fmtNum(f.o)}${when} · ${fmtInt(sig.length)} samples`;
    } else if (f) {
      text = `piecewise-linear F(σ), ${f.knots ? f.knots.length : '?'} knots${when} · ${fmtInt(sig.length)} samples`;
    }
    setText($('#fit-params', this.root), text);
    setText($('#fits-count', this.root), this.fits.length ? `${this.fits.length} fits` : '');
    const tbody = $('#fits-table tbody', this.root);
    tbody.textContent = '';
    for (const x of this.fits.slice(-6).reverse()) {
      tbody.append(h('tr', {}, h('td', { class: 'num' }, fmtInt(x.step)), h('td', { class: 'num' }, fmtNum(x.mu)),
        h('td', { class: 'num' }, fmtNum(x.s)), h('td', { class: 'num' }, fmtNum(x.h)), h('td', { class: 'num' }, fmtNum(x.o)),
        h('td', { class: 'num' }, fmtNum(x.rmse, 3))));
    }
  }

  // ---- state and header ----
  // "state" carries the whole Run (first on connect, then on every change).
  onState(d) {
    if (!d || !d.state) return;
    const run = api.normRun(d);
    if (run.id !== this.run.id) return;
    this.update(run);
    this.ctx.onRunChanged(this.run);
    if (TERMINAL.has(run.state)) api.listCheckpoints(this.run.id).then((c) => this.renderCheckpoints(c), () => {});
  }

  update(run) {
    const prev = `${this.run.state}/${this.run.pending}`;
    // a list poll may lag behind the event stream: never step backwards
    const keep = run.step < this.run.step ? { step: this.run.step, loss: this.run.loss, tokens: this.run.tokens } : {};
    this.run = { ...this.run, ...Object.fromEntries(Object.entries(run).filter(([, v]) => v !== null && v !== undefined)), ...keep };
    if (run.error !== undefined) this.run.error = run.error;
    const r = this.root;
    setText($('#run-title', r), this.run.name || `run ${this.run.id}`);
    const st = $('#run-state', r);
    setText(st, this.run.pending ? `${this.run.state}, ${this.run.pending === 'stop' ? 'stopping' : 'pausing'}…` : this.run.state);
    st.dataset.state = this.run.state;
    const err = $('#run-error', r);
    err.hidden = !this.run.error;
    setText(err, this.run.error);
    this.renderStats();
    if (prev !== `${this.run.state}/${this.run.pending}` || !$('#run-actions', r).childElementCount) this.renderActions();
  }

  renderStats() {
    const run = this.run;
    const stats = $('#run-stats', this.root);
    const age = run.created ? fmtDuration(now() - run.created) : '—';
    const items = [
      ['step', `${fmtInt(run.step)}${run.maxSteps ? ` / ${fmtInt(run.maxSteps)}` : ''}`],
      ['loss', fmtNum(run.loss)],
      ['valid', fmtNum(run.validLoss)],
      ['tokens/s', fmtInt(run.tokensPerS)],
      ['tokens', fmtInt(run.tokens)],
      ['age', age],
    ];
    if (run.checkpoint?.step !== null && run.checkpoint?.step !== undefined) items.push(['checkpoint', `step ${fmtInt(run.checkpoint.step)}`]);
    const text = items.map(([k, v]) => `${k} ${v}`).join(' ');
    if (stats.dataset.text === text) return;
    stats.dataset.text = text;
    stats.textContent = '';
    for (const [k, v] of items) stats.append(h('span', {}, `${k} `, h('b', { 'data-stat': k }, v)));
  }

  renderActions() {
    const box = $('#run-actions', this.root);
    box.textContent = '';
    for (const verb of actionsFor(this.run.state, this.run.pending)) {
      box.append(h('button', { type: 'button', class: verb === 'delete' ? 'danger' : '', 'data-action': verb,
        onclick: () => this.ctx.onAction(this.run, verb) }, ACTION_LABEL[verb]));
    }
  }

  renderCheckpoints(list) {
    const ul = $('#checkpoints', this.root);
    ul.textContent = '';
    for (const c of list) {
      const bytes = Number(c.bytes);
      const label = `step ${fmtInt(Number(c.step))}`;
      ul.append(h('li', {}, c.url && c.on_disk !== false ? h('a', { href: c.url, download: '' }, label) : label,
        Number.isFinite(bytes) ? ` · ${(bytes / 1048576).toFixed(1)} MiB` : '',
        c.sha256 ? ` · sha256 ${String(c.sha256).slice(0, 12)}…` : '', c.on_disk === false ? ' · removed' : ''));
    }
    if (!list.length) ul.append(h('li', { class: 'muted' }, 'no checkpoints yet'));
  }

  // ---- periodic stories ----
  // A batch was stored (the "stories" event): into the timeline and onto the curves.
  onStories(d) {
    const b = api.normStoryBatch(d);
    if (b.step === null) return;
    this.batches.set(b.step, b);
    this.curve.set(b.step, { ...b, stories: [] });
    this.renderStories();
  }

  // The timeline, newest step first: existing entries stay (and keep the reader's scroll
  // position), new steps are inserted where they belong, the oldest beyond the cap leave.
  renderStories() {
    if (this.ac.signal.aborted) return;
    const r = this.root;
    for (const [k] of [...this.batches].sort((a, b) => b[0] - a[0]).slice(STORY_BATCHES_SHOWN)) this.batches.delete(k);
    const steps = [...this.batches.keys()].sort((a, b) => b - a);
    const ol = $('#stories-timeline', r);
    const have = new Map([...ol.children].map((li) => [Number(li.dataset.step), li]));
    for (const [step, li] of have) if (!this.batches.has(step)) li.remove();
    let prev = null;
    for (const step of steps) {
      let li = have.get(step);
      if (!li) li = storyBatchItem(this.batches.get(step));
      if (prev ? prev.nextSibling !== li : ol.firstChild !== li) {
        if (prev) prev.after(li);
        else ol.prepend(li);
      }
      prev = li;
    }
    const every = Number(this.run.config?.train?.sample_every);
    const empty = $('#stories-empty', r);
    empty.hidden = steps.length > 0;
    if (!steps.length) {
      const n = Number(this.run.config?.train?.sample_n);
      setText(empty, every === 0 ? 'This run samples no stories during training (train.sample_every is 0).'
        : `No stories yet: the run samples ${n > 0 ? `${n} ` : ''}stories every ${fmtInt(every > 0 ? every : 500)} steps, with the same seeds each time, the last one prompted.`);
    }
    const n = this.curve.size;
    setText($('#stories-note', r), steps.length ? `${fmtInt(n)} ${n === 1 ? 'step' : 'steps'}${every > 0 ? `, every ${fmtInt(every)}` : ''} · same seeds at every step` : '');
    const last = [...this.curve.values()].reduce((a, b) => (a && a.step > b.step ? a : b), null);
    setText($('#quality-note', r), last ? `step ${fmtInt(last.step)}` : 'no stories yet');
    this.quality.setBatches([...this.curve.values()]);
  }

  // ---- samples ----
  // A sampling job finished (ours or anyone's): its stories are listed at once, and replaced by
  // the stored rows once the store has written them (it flushes at least every second).
  addLocalSamples(result) {
    const list = Array.isArray(result?.samples) ? result.samples : [];
    const known = new Set(this.samples.map((x) => x.text));
    for (const smp of list) {
      if (typeof smp.text !== 'string' || known.has(smp.text)) continue;
      this.samples.unshift({ id: '', step: result.step ?? null, text: smp.text, prompt: result.params?.prompt ?? '',
        params: result.params || {}, created: now(), local: true });
    }
    this.renderSamples();
  }

  refreshSamples(delay = 1500) {
    clearTimeout(this.samplesTimer);
    this.samplesTimer = setTimeout(() => {
      api.listSamples(this.run.id, { kind: 'request' }).then((list) => {
        if (this.ac.signal.aborted) return;
        const stored = new Set(list.map((x) => x.text));
        this.samples = [...this.samples.filter((x) => x.local && !stored.has(x.text)), ...list];
        this.renderSamples();
      }, () => {});
    }, delay);
  }

  renderSamples() {
    const ul = $('#samples-list', this.root);
    const list = this.samples.slice().sort((a, b) => (b.created ?? 0) - (a.created ?? 0) || Number(b.id) - Number(a.id)).slice(0, 40);
    $('#samples-empty', this.root).hidden = list.length > 0;
    ul.textContent = '';
    for (const s of list) {
      const meta = [s.step !== null ? `step ${fmtInt(s.step)}` : '', s.prompt ? `prompt “${s.prompt}”` : '',
        s.params.steps ? `${s.params.steps} steps` : '', s.params.seed !== undefined ? `seed ${s.params.seed}` : '',
        s.created ? new Date(s.created * 1000).toLocaleString() : ''].filter(Boolean).join(' · ');
      ul.append(h('li', {}, h('span', { class: 'meta' }, meta), s.text));
    }
  }

  async generate() {
    const r = this.root;
    const form = $('#gen-form', r);
    const btn = $('#gen-submit', r);
    const bar = $('#gen-progress', r);
    const preview = $('#gen-preview', r);
    const errEl = $('#gen-error', r);
    const ol = $('#gen-stories', r);
    const fd = new FormData(form);
    const params = {};
    for (const k of ['n', 'steps', 'seed']) if (fd.get(k) !== '') params[k] = Math.round(Number(fd.get(k)));
    if (fd.get('guidance') !== '') params.guidance = Number(fd.get('guidance'));
    if (String(fd.get('prompt')).trim()) params.prompt = String(fd.get('prompt')).trim();

    this.genAbort?.abort();
    const ac = (this.genAbort = new AbortController());
    this.result = null;
    btn.disabled = true;
    errEl.hidden = true;
    ol.textContent = '';
    preview.hidden = true;
    bar.hidden = false;
    this.setProgress(0, params.steps || 1, 'starting…');
    let shown = 0;
    const addStory = (text, i) => {
      if (typeof text !== 'string') return;
      const li = h('li', { 'data-story': i ?? shown }, text);
      ol.append(li);
      shown++;
    };
    const addAll = (d) => {
      const list = d.samples ?? d.stories ?? d.texts ?? (d.text !== undefined ? [d] : []);
      if (!Array.isArray(list)) return;
      if (shown >= list.length) return;
      ol.textContent = '';
      shown = 0;
      list.forEach((s, i) => addStory(typeof s === 'string' ? s : s.text, i));
    };
    try {
      await api.generate(this.run.id, params, (type, d) => {
        if (type === 'progress') {
          const total = d.n_steps ?? d.steps ?? d.total ?? params.steps;
          this.setProgress(d.step ?? 0, total, null);
          if (d.preview) { preview.hidden = false; setText(preview, d.preview); }
        } else if (type === 'story') {
          addStory(d.text, d.index);
        } else if (type === 'error') {
          throw new api.ApiError(d.error?.status ?? 500, d.error?.code ?? 'error', d.error?.message ?? String(d.message ?? 'sampling failed'), '');
        } else if (type === 'result' || type === 'done') {
          this.result = d;
          addAll(d);
        }
      }, ac.signal);
      const total = params.steps || 1;
      this.setProgress(total, total, shown ? `${shown} ${shown === 1 ? 'story' : 'stories'}` : 'done');
      preview.hidden = true;
      if (this.result) this.addLocalSamples(this.result);
      this.refreshSamples();
    } catch (e) {
      if (e.name === 'AbortError') return;
      errEl.hidden = false;
      setText(errEl, e.status === 0 ? 'cdcdd is unreachable.' : `${e.message}${e.field ? ` (${e.field})` : ''}`);
      bar.hidden = true;
      if (e.status === 401 || e.status === 403) document.dispatchEvent(new CustomEvent('cdcd-auth-needed'));
    } finally {
      if (this.genAbort === ac) btn.disabled = false;
    }
  }

  setProgress(step, total, label) {
    const bar = $('#gen-progress', this.root);
    const frac = total > 0 ? Math.max(0, Math.min(1, step / total)) : 0;
    bar.querySelector('.bar').style.width = `${(frac * 100).toFixed(1)}%`;
    bar.dataset.step = String(step);
    bar.dataset.total = String(total);
    setText(bar.querySelector('.label'), label ?? `denoising step ${step} / ${total}`);
  }
}

// One step of the timeline: the step, what the batch cost, its figures, then its stories
// (seed, text), the prompt of a prompted story highlighted.
function storyBatchItem(b) {
  const cost = b.seconds !== null ? `${fmtNum(b.seconds, 2)} s${b.share !== null ? ` (${fmtNum(100 * b.share, 2)}% of the last ${fmtInt(b.intervalSteps)} steps)` : ''}` : '';
  const meta = [`${b.stories.length || b.n} stories`, b.steps !== null ? `${fmtInt(b.steps)} ODE steps` : '', cost,
    b.created ? new Date(b.created * 1000).toLocaleString() : ''].filter(Boolean).join(' · ');
  const f = b.figures;
  const figs = f ? h('span', { class: 'figs' }, STORY_FIGURES.map((x) =>
    h('span', { 'data-figure': x.key }, `${x.label.replace(' (nats)', '')} `, h('b', {}, fmtNum(f[x.key], 3))))) : null;
  return h('li', { class: 'batch', 'data-step': String(b.step) },
    h('div', { class: 'batch-head' }, h('b', {}, `step ${fmtInt(b.step)}`), h('span', { class: 'meta' }, meta), figs),
    h('ol', { class: 'batch-stories' }, b.stories.map((x) => h('li', { 'data-seed': String(x.seed), class: x.prompt ? 'prompted' : '' },
      h('span', { class: 'seed', title: x.prompt ? `prompted with “${x.prompt}”` : 'unconditional' }, `seed ${x.seed}${x.prompt ? ' ✎' : ''}`),
      ...storyText(x)))));
}

// The story's text with its prompt marked: the decoded story begins with the prompt as the
// tokenizer writes it (lower case), so the match ignores case and runs of spaces.
export function storyText(x) {
  if (!x.prompt) return [x.text];
  const want = x.prompt.toLowerCase().replace(/\s+/g, ' ').trim();
  let i = 0, j = 0;
  const t = x.text;
  while (i < t.length && j < want.length) {
    if (/\s/.test(t[i]) && want[j] === ' ') { while (i < t.length && /\s/.test(t[i])) i++; j++; continue; }
    if (t[i].toLowerCase() !== want[j]) break;
    i++; j++;
  }
  if (j < want.length) return [t]; // not as expected: plain (the seed label says it was prompted)
  return [h('mark', { class: 'prompt', title: 'prompt' }, t.slice(0, i)), t.slice(i)];
}

function trimEntropy(e) {
  const n = e.step.length;
  if (n <= MAX_ENTROPY_POINTS) return e;
  const k = n - MAX_ENTROPY_POINTS;
  return { step: e.step.slice(k), sigma: e.sigma.slice(k), loss: e.loss.slice(k) };
}
