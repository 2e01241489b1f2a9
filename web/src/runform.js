// The "new run" form: a few fields and the raw JSON they edit. The JSON text is what gets
// posted; the fields read from and write into it, so keys typed only in the editor survive.
// A 400 from the daemon is shown next to the field its error.field names (or under the editor).
import * as api from './api.js';
import { $ } from './util.js';

function getPath(obj, path) {
  return path.split('.').reduce((o, k) => (o && typeof o === 'object' ? o[k] : undefined), obj);
}

function setPath(obj, path, value) {
  const keys = path.split('.');
  const parents = [obj];
  let o = obj;
  for (const k of keys.slice(0, -1)) {
    if (!o[k] || typeof o[k] !== 'object' || Array.isArray(o[k])) {
      if (value === undefined) return; // nothing to delete
      o[k] = {};
    }
    o = o[k];
    parents.push(o);
  }
  if (value !== undefined) { o[keys[keys.length - 1]] = value; return; }
  delete o[keys[keys.length - 1]];
  // drop the sections this left empty
  for (let i = keys.length - 1; i > 0; i--) {
    if (Object.keys(parents[i]).length) break;
    delete parents[i - 1][keys[i - 1]];
  }
}

// A field's text as the JSON value to send: numbers stay numbers, anything else is sent as
// typed so the daemon's validation names the field.
function fieldValue(input) {
  const raw = input.value.trim();
  if (raw === '') return undefined;
  if (input.dataset.path === 'name' || input.dataset.path === 'preset') return raw;
  const n = Number(raw);
  return Number.isFinite(n) ? n : raw;
}

export class RunForm {
  constructor(section, { onCreated }) {
    this.section = section;
    this.form = $('#run-form', section);
    this.json = $('#run-json', section);
    this.status = $('#run-form-status', section);
    this.submit = $('#run-submit', section);
    this.onCreated = onCreated;
    this.inputs = [...this.form.querySelectorAll('[data-path]')];
    this.json.value = JSON.stringify({ preset: 'tiny' }, null, 2);

    for (const input of this.inputs) {
      input.addEventListener('input', () => this.fieldsToJson(input));
      input.addEventListener('change', () => this.fieldsToJson(input));
    }
    this.json.addEventListener('input', () => this.jsonToFields());
    this.form.addEventListener('submit', (e) => { e.preventDefault(); this.send(); });
    $('#new-run-close', section).addEventListener('click', () => this.close());
  }

  open() {
    this.section.hidden = false;
    this.clearErrors();
    this.status.textContent = '';
    this.section.scrollIntoView({ block: 'nearest' });
    this.inputs[0].focus();
  }

  close() {
    this.section.hidden = true;
  }

  parse() {
    try {
      const v = JSON.parse(this.json.value || '{}');
      return v && typeof v === 'object' && !Array.isArray(v) ? v : null;
    } catch {
      return null;
    }
  }

  fieldsToJson(input) {
    const cfg = this.parse();
    if (!cfg) { this.showError('*', 'The JSON above does not parse; fix it or clear it to use the fields.'); return; }
    this.clearError(input.dataset.path);
    setPath(cfg, input.dataset.path, fieldValue(input));
    this.json.value = JSON.stringify(cfg, null, 2);
  }

  jsonToFields() {
    const cfg = this.parse();
    if (!cfg) { this.showError('*', 'Not valid JSON yet.'); return; }
    this.clearError('*');
    for (const input of this.inputs) {
      const v = getPath(cfg, input.dataset.path);
      if (input.tagName === 'SELECT') {
        if (v !== undefined && ![...input.options].some((o) => o.value === String(v))) input.append(new Option(String(v), String(v)));
        input.value = v === undefined ? 'tiny' : String(v);
      } else if (document.activeElement !== input) {
        input.value = v === undefined || typeof v === 'object' ? '' : String(v);
      }
    }
  }

  errorSlot(path) {
    return this.form.querySelector(`[data-err="${CSS.escape(path)}"]`);
  }

  // The deepest form field that names error.field or one of its parents; else the editor.
  showError(field, message) {
    let path = field || '*';
    while (path !== '*' && !this.errorSlot(path)) {
      const cut = Math.max(path.lastIndexOf('.'), path.lastIndexOf('['));
      path = cut > 0 ? path.slice(0, cut) : '*';
    }
    const slot = this.errorSlot(path);
    slot.textContent = path === '*' && field && field !== '*' ? `${field}: ${message}` : message;
    const input = path === '*' ? this.json : this.form.querySelector(`[data-path="${CSS.escape(path)}"]`);
    input?.classList.add('invalid');
    input?.setAttribute('aria-invalid', 'true');
    return path;
  }

  clearError(path) {
    const slot = this.errorSlot(path);
    if (slot) slot.textContent = '';
    const input = path === '*' ? this.json : this.form.querySelector(`[data-path="${CSS.escape(path)}"]`);
    input?.classList.remove('invalid');
    input?.removeAttribute('aria-invalid');
  }

  clearErrors() {
    for (const slot of this.form.querySelectorAll('[data-err]')) slot.textContent = '';
    for (const el of this.form.querySelectorAll('.invalid')) { el.classList.remove('invalid'); el.removeAttribute('aria-invalid'); }
  }

  async send() {
    this.clearErrors();
    const cfg = this.parse();
    if (!cfg) { this.showError('*', 'Not valid JSON.'); return; }
    this.submit.disabled = true;
    this.status.textContent = 'Starting…';
    try {
      const res = await api.createRun(this.json.value);
      this.status.textContent = '';
      this.close();
      this.onCreated(res);
    } catch (e) {
      this.status.textContent = '';
      if (e.status === 400 || e.status === 413 || e.status === 422) this.showError(e.field, e.message);
      else if (e.status === 401 || e.status === 403) this.showError('*', `${e.message} — set the API token at the top.`);
      else this.showError('*', e.status === 0 ? 'cdcdd is unreachable.' : `${e.status}: ${e.message}`);
      if (e.status === 401 || e.status === 403) document.dispatchEvent(new CustomEvent('cdcd-auth-needed'));
    } finally {
      this.submit.disabled = false;
    }
  }
}
