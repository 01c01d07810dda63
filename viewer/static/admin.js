'use strict';
// The admin console: each tab reads the admin JSON API with the session cookie. Data is only
// ever put into the page as text (never innerHTML), so header values cannot inject markup.
const T = JSON.parse(document.getElementById('labels').textContent);
const API = document.body.dataset.api;
const LOCALE = document.documentElement.lang === 'en' ? 'en-GB' : 'nb-NO';
const $ = id => document.getElementById(id);
const enc = encodeURIComponent;

function el(tag, props = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(props)) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  e.append(...children.filter(c => c !== null && c !== undefined && c !== false)
    .map(c => (c instanceof Node ? c : String(c))));
  return e;
}
const fmt = (text, values) => text.replace(/\{(\w+)\}/g, (_, k) => values[k]);
const bytes = n => {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${i ? n.toFixed(1) : n} ${units[i]}`;
};
const when = s => (s ? new Date(s).toLocaleString(LOCALE) : '');
const day = d => (d && d.length === 8 ? `${d.slice(6)}.${d.slice(4, 6)}.${d.slice(0, 4)}` : d);
const yes = b => (b ? `✓ ${T.yes}` : `– ${T.no}`);
const list = a => (a.length ? a.join(', ') : T.any);
const uid = u => el('span', {class: 'uid'}, u);
const num = n => ({num: n});  // a right-aligned cell
const button = (text, onclick, cls = '') => el('button', {type: 'button', class: cls, onclick}, text);

function say(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'error' : '';
}

async function api(path, method = 'GET', body = undefined) {
  // The header marks the request as the console's own; the server refuses cookie changes without it.
  const headers = {'X-Pacs-Console': '1'};
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const r = await fetch(API + path, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  if (r.status === 401) {
    say(T.session_expired, true);
    setTimeout(() => location.reload(), 1500);  // the server then shows the login page
    throw new Error(T.session_expired);
  }
  if (!r.ok) {
    let detail = `${r.status} ${r.statusText}`;
    try {
      const d = (await r.json()).detail;
      detail = typeof d === 'string' ? d : d.map(x => `${x.loc.slice(-1)}: ${x.msg}`).join('; ');
    } catch (_) { /* not JSON: keep the status line */ }
    throw new Error(detail);
  }
  return r.status === 204 ? null : r.json();
}

function table(columns, rows, empty = T.none) {
  if (!rows.length) return el('p', {class: 'empty'}, empty);
  const values = rows.map(row => columns.map(([, f]) => f(row)));
  const isNum = v => v !== null && typeof v === 'object' && !(v instanceof Node) && 'num' in v;
  const cls = columns.map((_, i) => (isNum(values[0][i]) ? 'num' : ''));
  return el('div', {class: 'scroll'}, el('table', {},
    el('thead', {}, el('tr', {}, ...columns.map(([head], i) => el('th', {class: cls[i]}, head)))),
    el('tbody', {}, ...values.map(vs => el('tr', {},
      ...vs.map((v, i) => el('td', {class: cls[i]}, isNum(v) ? v.num : v)))))));
}
const fill = (id, node) => $(id).replaceChildren(node);

function formJson(form) {
  const out = {};
  for (const i of form.elements) {
    if (!i.name) continue;
    if (i.type === 'checkbox') out[i.name] = i.checked;
    else if ('list' in i.dataset) out[i.name] = i.value.split(/[\s,]+/).filter(Boolean);
    else if (i.type === 'number') { if (i.value !== '') out[i.name] = Number(i.value); }
    else out[i.name] = i.value.trim();
  }
  return out;
}

let current = null;
// Runs a change, says how it went, and shows the tab's fresh state.
async function act(work, message, reload = true) {
  try {
    const out = await work();
    say(typeof message === 'function' ? message(out) : message);
    if (reload) await load(current);
    return out;
  } catch (e) {
    say(e.message, true);
    return undefined;
  }
}
const queued = job => fmt(T.job_queued, {id: job.id});
const ask = (question, work, message) => () => confirm(question) && act(work, message);

function onSubmit(id, work, message) {
  $(id).addEventListener('submit', async e => {
    e.preventDefault();
    if (await act(() => work(e.target), message) !== undefined) e.target.reset();
  });
}

function assignControls(s) {
  const input = el('input', {'aria-label': T.patient_id, placeholder: T.patient_id});
  const path = `/quarantine/studies/${enc(s.study_uid)}`;
  return el('span', {class: 'row'}, input,
    button(T.assign, () => input.value.trim()
      && act(() => api(`${path}/assign`, 'POST', {patient_id: input.value.trim()}), T.assigned)),
    button(T.reject, ask(T.confirm_reject, () => api(`${path}/reject`, 'POST'), T.rejected), 'danger'));
}

function progress(j) {
  const bar = el('progress', {max: j.total || 1});
  if (j.total) bar.value = j.done;
  else if (j.state === 'succeeded') bar.value = 1;
  else if (j.state !== 'running') bar.value = 0;  // running with an unknown total: indeterminate
  return el('span', {class: 'row'}, bar, j.total ? `${j.done} / ${j.total}` : '');
}

function jobActions(j) {
  const change = how => () => act(() => api(`/jobs/${j.id}/${how}`, 'POST'), queued);
  if (j.state === 'queued' || j.state === 'running') return button(T.cancel, change('cancel'), 'danger');
  if (j.state === 'failed' || j.state === 'cancelled') return button(T.retry, change('retry'));
  return '';
}

const keep = r => [r.keep_years && `${r.keep_years} ${T.years}`, r.keep_days && `${r.keep_days} ${T.days}`]
  .filter(Boolean).join(' + ');
const remove = (path, question = T.confirm_delete) => button(T.delete, ask(question, () => api(path, 'DELETE'), T.deleted), 'danger');
// Paging by event id, not offset: reading the log adds to it, which would shift offsets.
const auditPages = [];
let auditOldest = null;

const loaders = {
  async peers() {
    const p = await api('/peers');
    $('peers-self').textContent = `${T.own_ae}: ${p.ae_title} · DICOM ${p.dicom_port} · ` +
      `HL7 ${p.hl7_port || T.off} · ${p.unknown_aes_refused ? T.unknown_refused : T.unknown_loopback}`;
    fill('peers-table', table([
      [T.ae, x => x.ae], [T.host, x => x.host], [T.port, x => num(x.port)],
      [T.may_store, x => yes(x.store)], [T.may_query, x => yes(x.query)],
      [T.may_retrieve, x => yes(x.retrieve)],
    ], p.peers, T.no_peers));
  },
  async quarantine() {
    const q = await api('/quarantine');
    fill('quarantine-studies', table([
      [T.study_date, s => day(s.study_date)], [T.description, s => s.description],
      [T.header_patient, s => `${s.header_patient_id} ${s.header_patient_name.replaceAll('^', ' ')}`],
      [T.instances, s => num(s.instances)], [T.reason, s => s.reason],
      [T.study_uid, s => uid(s.study_uid)], [T.actions, assignControls],
    ], q.studies, T.no_quarantine));
    fill('quarantine-objects', table([
      [T.received, o => when(o.received_at)], [T.object, o => uid(o.object_key)],
      [T.size, o => num(bytes(o.size))], [T.source_ae, o => o.source_ae], [T.reason, o => o.reason],
    ], q.objects));
  },
  async retention() {
    fill('retention-rules', table([
      [T.name, r => r.name], [T.modalities, r => list(r.modalities)],
      [T.sop_classes, r => list(r.sop_classes)], [T.source_aes, r => list(r.source_aes)],
      [T.keep, keep], [T.min_patient_age, r => r.min_patient_age ?? ''],
      [T.enabled, r => yes(r.enabled)], [T.created_by, r => r.created_by],
      ['', r => remove(`/retention/rules/${r.id}`)],
    ], await api('/retention/rules'), T.no_rules));
  },
  async holds() {
    fill('holds-table', table([
      [T.study_uid, h => uid(h.study_uid)], [T.patient_id, h => h.patient_id],
      [T.study_date, h => day(h.study_date)], [T.reason, h => h.reason],
      [T.held_by, h => h.held_by], [T.held_at, h => when(h.held_at)],
      ['', h => button(T.release, ask(T.confirm_release,
        () => api(`/studies/${enc(h.study_uid)}/hold`, 'DELETE'), T.deleted), 'danger')],
    ], await api('/holds'), T.no_holds));
  },
  async prefetch() {
    fill('prefetch-rules', table([
      [T.name, r => r.name], [T.modalities, r => list(r.modalities)],
      [T.body_part, r => r.body_part || T.any], [T.prior_years, r => num(r.years)],
      [T.max_studies, r => num(r.max_studies)], [T.on_order, r => yes(r.on_order)],
      [T.on_admission, r => yes(r.on_admission)], [T.order_modalities, r => list(r.order_modalities)],
      [T.enabled, r => yes(r.enabled)], ['', r => remove(`/prefetch/rules/${r.id}`)],
    ], await api('/prefetch/rules'), T.no_rules));
  },
  async jobs() {
    const state = $('job-state').value;
    fill('jobs-table', table([
      [T.id, j => `#${j.id}`], [T.kind, j => j.kind],
      [T.state, j => el('span', {class: `state ${j.state}`}, T[`state_${j.state}`] || j.state)],
      [T.progress, progress], [T.message, j => j.message], [T.created_by, j => j.created_by],
      [T.created, j => when(j.created_at)], [T.finished, j => when(j.finished_at)], ['', jobActions],
    ], await api(`/jobs?limit=100${state ? `&state=${enc(state)}` : ''}`), T.no_jobs));
  },
  async storage() {
    const s = await api('/storage'), a = s.archive;
    $('storage-summary').textContent = fmt(T.archive_summary, {...a, bytes: bytes(a.bytes)});
    const t = s.tiers;
    fill('storage-tiers', t === null ? el('p', {class: 'empty'}, `${T.no_near} (${s.far}).`) : el('div', {},
      table([
        [T.tier, x => x.name], [T.objects, x => num(x.objects ?? '')], [T.used, x => x.used ?? ''],
        [T.reads, x => num(x.reads)], [T.bytes_served, x => num(bytes(x.bytes_served))],
      ], [
        {...t.near, name: T.near, used: el('span', {class: 'row'},
          el('progress', {max: t.near.budget_bytes, value: Math.min(t.near.bytes, t.near.budget_bytes)}),
          `${bytes(t.near.bytes)} / ${bytes(t.near.budget_bytes)}`)},
        {...t.far, name: `${T.far} (${s.far})`},
      ]),
      el('p', {}, `${T.hit_ratio}: ${t.hit_ratio === null ? '–' : `${(t.hit_ratio * 100).toFixed(1)} %`}`)));
    fill('storage-modalities', table([
      [T.modality, m => m.modality], [T.studies, m => num(m.studies)],
      [T.instances, m => num(m.instances)], [T.size, m => num(bytes(m.bytes))],
    ], s.by_modality));
  },
  async audit() {
    const q = new URLSearchParams();
    for (const [k, v] of new FormData($('audit-filter'))) if (v) q.set(k, v);
    if (auditPages.length) q.set('before_id', auditPages[auditPages.length - 1]);
    const page = await api(`/audit?${q}`);
    fill('audit-table', table([
      [T.at, e => when(e.at)], [T.actor, e => e.actor], [T.role, e => e.role], [T.source, e => e.source],
      [T.action, e => el('span', {class: 'nowrap'}, e.action)], [T.patient_id, e => e.patient_id],
      [T.study_uid, e => uid(e.study_uid)], [T.outcome, e => e.outcome],
      [T.detail, e => el('span', {class: 'detail'}, e.detail)],
    ], page.events));
    $('audit-newer').disabled = !auditPages.length;
    $('audit-older').disabled = !page.more;
    auditOldest = page.events.length ? page.events[page.events.length - 1].id : null;
  },
};

async function load(name) {
  try { await loaders[name](); } catch (e) { say(e.message, true); }
}

function show(name) {
  current = name in loaders ? name : 'peers';
  for (const s of document.querySelectorAll('main > section')) s.hidden = s.id !== current;
  for (const a of document.querySelectorAll('#tabs a')) {
    a.classList.toggle('on', a.hash === `#${current}`);
    if (a.hash === `#${current}`) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  return load(current);
}

onSubmit('retention-add', f => api('/retention/rules', 'POST', formJson(f)), T.saved);
onSubmit('prefetch-add', f => api('/prefetch/rules', 'POST', formJson(f)), T.saved);
onSubmit('prefetch-now', f => api('/prefetch', 'POST', formJson(f)), queued);
onSubmit('holds-add', f => {
  const {study_uid: study, reason} = formJson(f);
  return api(`/studies/${enc(study)}/hold`, 'PUT', {reason});
}, T.saved);
$('audit-filter').addEventListener('submit', e => { e.preventDefault(); auditPages.length = 0; load('audit'); });
$('audit-older').onclick = () => { auditPages.push(auditOldest); load('audit'); };
$('audit-newer').onclick = () => { auditPages.pop(); load('audit'); };
$('dry-run').onclick = () => act(async () => {
  const d = await api('/retention/dry-run');
  fill('dry-run-result', el('div', {},
    el('p', {class: 'summary'}, fmt(T.dry_run_summary,
      {studies: d.total_studies, instances: d.total_instances, bytes: bytes(d.total_bytes)})),
    table([
      [T.study_uid, s => uid(s.study_uid)], [T.patient_id, s => s.patient_id],
      [T.study_date, s => day(s.study_date)], [T.instances, s => num(s.instances)],
      [T.size, s => num(bytes(s.bytes))], [T.whole_study, s => yes(s.whole_study)],
      [T.reasons, s => s.reasons.join('; ')],
    ], d.studies, T.nothing_to_delete)));
  return d;
}, '', false);  // a dry run changes nothing: re-rendering the rules would only make them flicker
$('sweep').onclick = ask(T.confirm_sweep, () => api('/retention/sweep', 'POST'), queued);
$('fixity').onclick = () => act(() => api('/fixity', 'POST', {}), queued);
$('job-state').onchange = () => load('jobs');

window.addEventListener('hashchange', () => { say(''); show(location.hash.slice(1)); });
// Jobs move on their own: refresh their tab while it is on screen.
setInterval(() => { if (current === 'jobs' && !document.hidden) load('jobs'); }, 2000);
show(location.hash.slice(1));
