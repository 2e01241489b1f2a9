// Charts on uPlot (web/node_modules/uplot, copied to dist/vendor by scripts/build-web.sh).
// Each chart keeps its uPlot instance and updates it with setData, so live points never
// rebuild the page or the chart; only a log-y or x-axis switch recreates a plot.
import uPlot from './vendor/uPlot.esm.js';

export const COLORS = {
  raw: 'rgba(37, 99, 235, 0.28)',
  ema: 'rgb(29, 78, 216)',
  band: 'rgba(37, 99, 235, 0.08)',
  valid: 'rgb(234, 88, 12)',
  lr: 'rgb(124, 58, 237)',
  grad: 'rgb(5, 150, 105)',
  tps: 'rgb(202, 138, 4)',
  scatter: [30, 41, 59], // slate; alpha grows with recency
  fit: 'rgb(220, 38, 38)',
  fitOld: [220, 38, 38],
  grid: 'rgba(100, 116, 139, 0.15)',
  axis: '#475569',
};

// The fitted schedule: F(sigma) = h * (atan((sigma - mu) / s) / pi + 1/2) + o.
export function cauchyF(sigma, f) {
  return f.h * (Math.atan((sigma - f.mu) / f.s) / Math.PI + 0.5) + f.o;
}

// Debiased exponential moving average (as TensorBoard's smoothing): w = 0 is the raw curve.
export function emaSmooth(ys, w) {
  const out = new Array(ys.length);
  let acc = 0;
  let n = 0;
  for (let i = 0; i < ys.length; i++) {
    const v = ys[i];
    if (v === null || !Number.isFinite(v)) { out[i] = null; continue; }
    n++;
    acc = acc * w + (1 - w) * v;
    out[i] = w > 0 ? acc / (1 - w ** n) : v;
  }
  return out;
}

export function fmtSI(v, digits = 3) {
  if (v === null || v === undefined || !Number.isFinite(v)) return '—';
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return v.toExponential(2);
  if (a >= 1000) return v.toFixed(0);
  return Number(v.toPrecision(digits)).toString();
}

const axisFont = '11px system-ui, sans-serif';

// Tick labels; on a log scale spanning more than a decade only 1, 2 and 5 x 10^k are labelled
// (uPlot puts a tick, and a grid line, at every integer multiple).
function tickValues(u, vals, axisIdx) {
  const key = u.axes[axisIdx].scale;
  const sc = u.scales[key];
  const log = sc.distr === 3;
  const wide = log && sc.max / sc.min > 12;
  return vals.map((v) => {
    if (v === null || v === undefined) return '';
    if (wide) {
      const m = Math.round(v / 10 ** Math.floor(Math.log10(v) + 1e-9));
      if (m !== 1 && m !== 2 && m !== 5) return '';
    }
    return fmtSI(v, 3);
  });
}
const yAxis = (extra = {}) => ({
  stroke: COLORS.axis, font: axisFont, size: 52, gap: 4,
  grid: { stroke: COLORS.grid, width: 1 }, ticks: { stroke: COLORS.grid, width: 1, size: 4 },
  values: tickValues,
  ...extra,
});
// Steps are whole numbers: ticks at 1, 2, 5 x 10^k only.
const STEP_INCRS = [];
for (let k = 0; k < 10; k++) for (const m of [1, 2, 5]) STEP_INCRS.push(m * 10 ** k);

const xAxis = (extra = {}) => ({
  stroke: COLORS.axis, font: axisFont, size: 36, gap: 4,
  grid: { stroke: COLORS.grid, width: 1 }, ticks: { stroke: COLORS.grid, width: 1, size: 4 },
  ...extra,
});

// Creates the plot at the container's width and keeps it fitted on resize.
class Base {
  constructor(el, height) {
    this.el = el;
    this.height = height;
    this.u = null;
    this.ro = new ResizeObserver(() => this.resize());
    this.ro.observe(el);
  }

  width() {
    return Math.max(160, Math.floor(this.el.clientWidth || this.el.getBoundingClientRect().width || 600));
  }

  resize() {
    if (!this.u) return;
    const w = this.width();
    if (Math.abs(w - this.u.width) > 1) this.u.setSize({ width: w, height: this.height });
  }

  mount(opts, data) {
    this.u?.destroy();
    this.el.textContent = '';
    this.u = new uPlot({ width: this.width(), height: this.height, ...opts }, data, this.el);
  }

  destroy() {
    this.ro.disconnect();
    this.u?.destroy();
    this.u = null;
  }
}

// Loss vs step (or wall time): faint raw curve, EMA over it, the per-bucket min/max band of a
// downsampled series, validation loss as dots. Drag to zoom (the app then fetches that step
// range at full resolution), double-click or reset() to zoom out.
export class LossChart extends Base {
  constructor(el, { onZoom } = {}) {
    super(el, 280);
    this.onZoom = onZoom || (() => {});
    this.logY = false;
    this.xMode = 'step';
    this.smoothing = 0.9;
    this.overview = null; // column series of the whole run (downsampled)
    this.detail = null; // full-resolution rows of the zoomed range
    this.zoom = null; // [min, max] on the x axis while zoomed
    this.build();
  }

  build() {
    const time = this.xMode === 'time';
    this.mount({
      scales: { x: { time }, y: this.logY ? { distr: 3, log: 10 } : { auto: true } },
      axes: [time ? xAxis() : xAxis({ incrs: STEP_INCRS }), yAxis()],
      legend: { live: true },
      cursor: {
        drag: { x: true, y: false, setScale: true },
        sync: time ? undefined : { key: 'cdcd-steps' },
        bind: { dblclick: () => (e) => { if (e.button === 0) this.reset(); return null; } },
      },
      bands: [{ series: [1, 2], fill: COLORS.band }],
      series: [
        { label: time ? 'time' : 'step', value: (u, v) => (v === null ? '—' : time ? new Date(v * 1000).toLocaleTimeString() : String(v)) },
        { label: 'max', stroke: 'transparent', width: 0, points: { show: false }, value: (u, v) => fmtSI(v) },
        { label: 'min', stroke: 'transparent', width: 0, points: { show: false }, value: (u, v) => fmtSI(v) },
        { label: 'loss', stroke: COLORS.raw, width: 1, points: { show: false }, value: (u, v) => fmtSI(v, 4) },
        { label: 'EMA', stroke: COLORS.ema, width: 2, points: { show: false }, value: (u, v) => fmtSI(v, 4) },
        { label: 'valid', stroke: COLORS.valid, width: 1.5, spanGaps: true, points: { show: true, size: 5, fill: COLORS.valid }, value: (u, v) => fmtSI(v, 4) },
      ],
      hooks: {
        setSelect: [(u) => {
          if (u.select.width < 2) return;
          const min = u.posToVal(u.select.left, 'x');
          const max = u.posToVal(u.select.left + u.select.width, 'x');
          this.zoom = [min, max];
          this.onZoom(this.toSteps(min), this.toSteps(max));
        }],
        draw: [(u) => this.markDrawn(u)],
      },
    }, this.columns());
    if (this.zoom) this.u.setScale('x', { min: this.zoom[0], max: this.zoom[1] });
  }

  // Step for an x value (the x axis may be wall time).
  toSteps(x) {
    if (this.xMode === 'step') return Math.round(x);
    const s = this.detail || this.overview;
    if (!s || !s.time.length) return 0;
    let i = s.time.findIndex((t) => t !== null && t >= x);
    if (i < 0) i = s.time.length - 1;
    return s.step[i];
  }

  columns() {
    const s = this.detail || this.overview;
    if (!s) return [[], [], [], [], [], []];
    const x = this.xMode === 'time' ? s.time : s.step;
    const pos = (a) => (this.logY ? a.map((v) => (v !== null && v > 0 ? v : null)) : a);
    const hasBand = s.lossMin.some((v) => v !== null);
    return [
      x,
      pos(hasBand ? s.lossMax : s.lossMax.map(() => null)),
      pos(hasBand ? s.lossMin : s.lossMin.map(() => null)),
      pos(s.loss),
      pos(emaSmooth(s.loss, this.smoothing)),
      pos(s.validLoss),
    ];
  }

  // Draw markers the tests read: how many loss points landed inside the plot.
  markDrawn(u) {
    const xs = u.data[0];
    const ys = u.data[3];
    let n = 0;
    const { min, max } = u.scales.x;
    for (let i = 0; i < xs.length; i++) if (ys[i] !== null && xs[i] >= min && xs[i] <= max) n++;
    this.el.dataset.points = String(n);
    this.el.dataset.logY = this.logY ? '1' : '0';
  }

  setOverview(series) {
    this.overview = series;
    if (!this.detail) this.u.setData(this.columns(), !this.zoom);
  }

  setDetail(series) {
    this.detail = series;
    this.u.setData(this.columns(), false);
    if (this.zoom) this.u.setScale('x', { min: this.zoom[0], max: this.zoom[1] });
  }

  reset() {
    this.zoom = null;
    this.detail = null;
    this.u.setData(this.columns(), true);
    this.onZoom(null, null);
  }

  setSmoothing(w) {
    this.smoothing = w;
    this.u.setData(this.columns(), !this.zoom);
    if (this.zoom) this.u.setScale('x', { min: this.zoom[0], max: this.zoom[1] });
  }

  setLogY(on) {
    this.logY = on;
    this.build();
  }

  setXMode(mode) {
    this.xMode = mode;
    this.zoom = null;
    this.detail = null;
    this.build();
  }
}

// A single metric against step (learning rate, grad norm, tokens/s).
export class MetricChart extends Base {
  constructor(el, { label, color, key }) {
    super(el, 150);
    this.key = key;
    this.mount({
      scales: { x: { time: false } },
      axes: [xAxis({ incrs: STEP_INCRS }), yAxis()],
      legend: { live: true },
      cursor: { sync: { key: 'cdcd-steps' }, drag: { x: true, y: false } },
      series: [
        { label: 'step' },
        { label, stroke: color, width: 1.5, points: { show: false }, value: (u, v) => fmtSI(v, 4) },
      ],
    }, [[], []]);
  }

  setSeries(s) {
    this.u.setData([s.step, s[this.key]]);
  }
}

// log-spaced grid over [a, b]
function logGrid(a, b, n) {
  const la = Math.log(a), lb = Math.log(b);
  return Array.from({ length: n }, (_, i) => Math.exp(la + ((lb - la) * i) / (n - 1)));
}

// Points of a fit's curve over [a, b]: the Cauchy formula on a log grid, or (a piecewise-linear
// fit) its knots, log-spaced over the schedule's [tmin, tmax].
export function fitCurve(fit, a, b, tmin, tmax) {
  if (fit.cauchy) return logGrid(a, b, 160).map((x) => [x, cauchyF(x, fit)]);
  if (fit.knots && tmin > 0 && tmax > tmin) {
    const xs = logGrid(tmin, tmax, fit.knots.length);
    return xs.map((x, i) => [x, fit.knots[i]]);
  }
  return [];
}

function drawCurve(u, fit, color, width, tmin, tmax) {
  const ctx = u.ctx;
  const { min, max } = u.scales.x;
  if (!(min > 0) || !(max > min)) return 0;
  ctx.save();
  ctx.beginPath();
  ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
  ctx.clip();
  ctx.strokeStyle = color;
  ctx.lineWidth = width * devicePixelRatio;
  ctx.lineJoin = 'round';
  ctx.beginPath();
  let n = 0;
  for (const [x, y] of fitCurve(fit, min, max, tmin, tmax)) {
    if (!Number.isFinite(y)) continue;
    const px = u.valToPos(x, 'x', true);
    const py = u.valToPos(y, 'y', true);
    n++ === 0 ? ctx.moveTo(px, py) : ctx.lineTo(px, py);
  }
  ctx.stroke();
  ctx.restore();
  return n;
}

// The sigma axis spans the schedule's noise range [tmin, tmax] when known, else the data's
// (uPlot's default log range would round out to whole decades).
function sigmaRange(chart, min, max) {
  if (chart.tmin > 0 && chart.tmax > chart.tmin) return [chart.tmin, chart.tmax];
  if (!(min > 0) || !(max > 0)) return [0.1, 200];
  return min === max ? [min / 2, max * 2] : [min, max];
}

// Entropy (per-sequence loss) against sigma, log-x: the samples as dots, recent ones darker,
// and the current Cauchy fit F(sigma) over them.
export class EntropyChart extends Base {
  constructor(el) {
    super(el, 300);
    this.samples = { step: [], sigma: [], loss: [] };
    this.fit = null;
    this.tmin = null;
    this.tmax = null;
    this.mount({
      mode: 1,
      scales: {
        x: { time: false, distr: 3, log: 10, range: (u, min, max) => sigmaRange(this, min, max) },
        y: { range: (u, min, max) => this.yRange(min, max) },
      },
      axes: [xAxis({ label: 'σ', labelSize: 16, labelFont: axisFont, values: tickValues }), yAxis({ label: 'loss (nats)', labelSize: 16, labelFont: axisFont })],
      legend: { show: false },
      cursor: { drag: { x: false, y: false, setScale: false }, points: { show: false } },
      series: [{}, { label: 'loss', stroke: 'transparent', paths: () => null, points: { show: false } }],
      hooks: { draw: [(u) => this.drawOver(u)] },
    }, [[], []]);
  }

  yRange(min, max) {
    let lo = min, hi = max;
    if (!(Number.isFinite(lo) && Number.isFinite(hi))) return [0, 10];
    if (hi - lo < 1e-6) { lo -= 0.5; hi += 0.5; }
    const pad = (hi - lo) * 0.05;
    return [Math.max(0, lo - pad), hi + pad];
  }

  // samples: {step, sigma, loss} oldest first; range: the schedule's [tmin, tmax]
  setData(samples, fit, range) {
    this.samples = samples;
    this.fit = fit;
    if (range) [this.tmin, this.tmax] = range;
    const order = samples.sigma.map((_, i) => i).sort((a, b) => samples.sigma[a] - samples.sigma[b]);
    let xs = order.map((i) => samples.sigma[i]);
    let ys = order.map((i) => samples.loss[i]);
    if (!xs.length && fit) { // no samples yet: the fit alone, over the noise range
      const pts = fitCurve(fit, this.tmin || 0.1, this.tmax || 200, this.tmin, this.tmax);
      xs = pts.map((p) => p[0]);
      ys = pts.map((p) => p[1]);
    }
    this.u.setData([xs, ys]);
  }

  drawOver(u) {
    const ctx = u.ctx;
    const { step, sigma, loss } = this.samples;
    let drawn = 0;
    ctx.save();
    ctx.beginPath();
    ctx.rect(u.bbox.left, u.bbox.top, u.bbox.width, u.bbox.height);
    ctx.clip();
    if (sigma.length) {
      let s0 = Infinity, s1 = -Infinity;
      for (const s of step) { if (s < s0) s0 = s; if (s > s1) s1 = s; }
      const span = s1 - s0 || 1;
      const r = 2.2 * devicePixelRatio;
      const [cr, cg, cb] = COLORS.scatter;
      // oldest first so that the recent (darker) points end up on top
      for (let i = 0; i < sigma.length; i++) {
        const age = (step[i] - s0) / span; // 0 oldest .. 1 newest
        const px = u.valToPos(sigma[i], 'x', true);
        const py = u.valToPos(loss[i], 'y', true);
        if (!Number.isFinite(px) || !Number.isFinite(py)) continue;
        ctx.fillStyle = `rgba(${cr},${cg},${cb},${(0.1 + 0.75 * age * age).toFixed(3)})`;
        ctx.beginPath();
        ctx.arc(px, py, r, 0, 2 * Math.PI);
        ctx.fill();
        if (px >= u.bbox.left && px <= u.bbox.left + u.bbox.width) drawn++;
      }
    }
    ctx.restore();
    const fitPts = this.fit ? drawCurve(u, this.fit, COLORS.fit, 2.5, this.tmin, this.tmax) : 0;
    this.el.dataset.points = String(drawn);
    this.el.dataset.fit = fitPts > 0 ? '1' : '0';
  }
}

// How the fit evolved: every fitted curve, older ones lighter, the current one on top.
export class FitHistoryChart extends Base {
  constructor(el) {
    super(el, 200);
    this.fits = [];
    this.range = [0.05, 500];
    this.mount({
      mode: 1,
      scales: { x: { time: false, distr: 3, log: 10, range: (u, min, max) => sigmaRange(this, min, max) }, y: { range: () => this.yRange() } },
      axes: [xAxis({ values: tickValues }), yAxis()],
      legend: { show: false },
      cursor: { show: false },
      series: [{}, { stroke: 'transparent', paths: () => null, points: { show: false } }],
      hooks: { draw: [(u) => this.drawOver(u)] },
    }, [[], []]);
  }

  yRange() {
    let lo = Infinity, hi = -Infinity;
    const [a, b] = this.range;
    for (const f of this.fits) {
      for (const [, y] of fitCurve(f, a, b, this.tmin, this.tmax)) if (Number.isFinite(y)) { lo = Math.min(lo, y); hi = Math.max(hi, y); }
    }
    if (!Number.isFinite(lo)) return [0, 10];
    const pad = (hi - lo) * 0.05 || 0.5;
    return [Math.max(0, lo - pad), hi + pad];
  }

  // fits oldest first; range [sigmaMin, sigmaMax] shared with the scatter; t: [tmin, tmax]
  setFits(fits, range, t) {
    this.fits = fits.filter((f) => f.ok !== false);
    if (t) [this.tmin, this.tmax] = t;
    if (range && range[0] > 0 && range[1] > range[0]) this.range = range;
    const xs = [this.range[0], this.range[1]];
    this.u.setData([xs, [null, null]]);
  }

  drawOver(u) {
    const n = this.fits.length;
    const [r, g, b] = COLORS.fitOld;
    this.fits.forEach((f, i) => {
      const last = i === n - 1;
      const a = last ? 1 : 0.12 + 0.5 * (i / Math.max(1, n - 1));
      drawCurve(u, f, last ? COLORS.fit : `rgba(${r},${g},${b},${a.toFixed(3)})`, last ? 2.5 : 1.2, this.tmin, this.tmax);
    });
    this.el.dataset.fits = String(n);
  }
}

// The quality figures of the periodic stories against step (core/textstats.h): shares of
// word n-grams on the left axis (0..1), the token entropy in nats on the right (dashed).
export const STORY_FIGURES = [
  { key: 'bigram_seen', label: 'bigram seen', color: 'rgb(37, 99, 235)', scale: 'share' },
  { key: 'trigram_seen', label: 'trigram seen', color: 'rgb(5, 150, 105)', scale: 'share' },
  { key: 'distinct2', label: 'distinct-2', color: 'rgb(124, 58, 237)', scale: 'share' },
  { key: 'repeat4', label: 'repeat-4', color: 'rgb(220, 38, 38)', scale: 'share' },
  { key: 'token_entropy', label: 'token entropy (nats)', color: 'rgb(202, 138, 4)', scale: 'nats', dash: [6, 4] },
];

export class StoryFiguresChart extends Base {
  constructor(el) {
    super(el, 250);
    this.mount({
      scales: {
        x: { time: false, range: (u, min, max) => (min === max ? [Math.max(0, min - 1), max + 1] : [min, max]) },
        share: { range: [0, 1] },
        nats: { range: (u, min, max) => (Number.isFinite(min) ? [0, Math.max(1, Math.ceil(max * 1.1))] : [0, 8]) },
      },
      axes: [
        xAxis({ incrs: STEP_INCRS }),
        yAxis({ scale: 'share', size: 40 }),
        yAxis({ scale: 'nats', side: 1, size: 36, grid: { show: false } }),
      ],
      legend: { live: true },
      cursor: { sync: { key: 'cdcd-steps' }, drag: { x: false, y: false, setScale: false } },
      series: [
        { label: 'step' },
        ...STORY_FIGURES.map((f) => ({
          label: f.label, stroke: f.color, width: 1.6, scale: f.scale, dash: f.dash, spanGaps: true,
          points: { show: true, size: 5, fill: f.color }, value: (u, v) => fmtSI(v, 3),
        })),
      ],
      hooks: { draw: [(u) => { this.el.dataset.points = String(u.data[0].length); }] },
    }, [[], ...STORY_FIGURES.map(() => [])]);
  }

  // batches: [{step, figures}] in any order; those without figures leave gaps
  setBatches(batches) {
    const rows = batches.filter((b) => b.step !== null).sort((a, b) => a.step - b.step);
    this.u.setData([rows.map((b) => b.step), ...STORY_FIGURES.map((f) => rows.map((b) => b.figures?.[f.key] ?? null))]);
  }
}
