// kiln console: every page's behaviour. The pages come from the server without data; this
// script fills them through the HTTP API (fetch to /v1/...), sending the API key, when the
// server asks for one, as a bearer token. The key lives in sessionStorage (this tab only).
'use strict';

(function () {
  const fmt = window.KilnCharts.fmt;
  const KEY = 'kiln.apiKey';
  let memoryKey = null;

  // ---- DOM helpers (text only: nothing from the API is parsed as HTML) ----
  const $ = (sel, root) => (root || document).querySelector(sel);
  function el(tag, props, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === 'text') e.textContent = v;
      else if (k === 'class') e.className = v;
      else if (k === 'on') for (const [ev, f] of Object.entries(v)) e.addEventListener(ev, f);
      else e.setAttribute(k, v === true ? '' : String(v));
    }
    for (const c of children.flat()) {
      if (c === null || c === undefined) continue;
      e.appendChild(typeof c === 'string' || typeof c === 'number' ? document.createTextNode(String(c)) : c);
    }
    return e;
  }
  function clear(e) { while (e.firstChild) e.removeChild(e.firstChild); return e; }
  function facts(dl, pairs) {
    clear(dl);
    for (const [k, v] of pairs) {
      if (v === undefined) continue;
      dl.append(el('dt', { text: k }), el('dd', {}, v instanceof Node ? v : (typeof v === 'number' ? fmt(v) : String(v === null ? '–' : v))));
    }
  }
  function status(target, text, kind) {
    target.textContent = text;
    target.className = 'status' + (kind ? ' ' + kind : '');
  }
  function banner(text) {
    const b = $('#banner');
    if (!text) { b.hidden = true; return; }
    b.textContent = text;
    b.hidden = false;
  }
  function when(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    return isNaN(d) ? iso : d.toLocaleString();
  }
  const enc = encodeURIComponent;
  // Anything the CSP blocks is a bug of the console: say so on the page (and count it).
  document.addEventListener('securitypolicyviolation', (e) => {
    document.body.dataset.cspViolations = String(Number(document.body.dataset.cspViolations || 0) + 1);
    banner('blocked by the Content-Security-Policy: ' + e.violatedDirective + ' ' + (e.blockedURI || ''));
  });

  // ---- the API key ----
  function getKey() {
    try { return sessionStorage.getItem(KEY) || memoryKey; } catch (_) { return memoryKey; }
  }
  function setKey(k) {
    memoryKey = k || null;
    try { if (k) sessionStorage.setItem(KEY, k); else sessionStorage.removeItem(KEY); } catch (_) { /* memory only */ }
    showKeyState();
  }
  function showKeyState() {
    $('#key-state').textContent = getKey() ? 'key set' : '';
  }
  let asking = null;
  // After a cancelled dialog, calls fail with their 401 until the key button is used.
  let declined = false;
  // Shows the key dialog; resolves once a key is entered, rejects on cancel.
  function askKey(reason, asked) {
    if (declined && !asked) return Promise.reject(new ApiError(401, (reason || 'an API key is needed') + ' (use the API key button)'));
    if (asking) return asking;
    const dialog = $('#key-dialog');
    $('#key-reason').textContent = reason || 'This server needs an API key.';
    $('#key-input').value = '';
    asking = new Promise((resolve, reject) => {
      const done = (ok) => {
        dialog.removeEventListener('close', onClose);
        asking = null;
        ok ? resolve() : reject(new ApiError(401, reason || 'an API key is needed'));
      };
      const onClose = () => {
        const k = $('#key-input').value.trim();
        if (dialog.returnValue !== 'cancel' && k) { setKey(k); declined = false; done(true); } else { declined = true; done(false); }
      };
      dialog.returnValue = '';
      dialog.addEventListener('close', onClose);
      if (!dialog.open) dialog.showModal();
    });
    return asking;
  }

  class ApiError extends Error {
    constructor(status, message) { super(message); this.status = status; }
  }

  // A call to the API. JSON bodies are encoded; `raw` returns the Response (streams).
  async function api(path, opts) {
    opts = opts || {};
    const headers = new Headers(opts.headers || {});
    const k = getKey();
    if (k) headers.set('Authorization', 'Bearer ' + k);
    let body = opts.body;
    if (body !== undefined && !(body instanceof Blob) && typeof body !== 'string') {
      body = JSON.stringify(body);
      headers.set('Content-Type', 'application/json');
    }
    const res = await fetch(path, { method: opts.method || 'GET', body: body, headers: headers, signal: opts.signal });
    if (res.status === 401 || (res.status === 403 && !opts.noRetry)) {
      const e = await res.json().catch(() => ({}));
      await askKey(e.error);
      return api(path, Object.assign({}, opts, { noRetry: res.status === 403 }));
    }
    if (opts.raw) return res;
    const text = await res.text();
    let data = null;
    try { data = text ? JSON.parse(text) : null; } catch (_) { data = { error: text }; }
    if (!res.ok) throw new ApiError(res.status, (data && data.error) || res.statusText);
    return data;
  }

  // Server-sent events over fetch (EventSource cannot send the key): calls on(type, data)
  // per event until the stream ends.
  async function events(path, on, signal) {
    const res = await api(path, { raw: true, headers: { Accept: 'text/event-stream' }, signal: signal });
    if (!res.ok) {
      const e = await res.json().catch(() => ({}));
      throw new ApiError(res.status, e.error || res.statusText);
    }
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buf = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += value.replace(/\r\n?/g, '\n');
      let i;
      while ((i = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, i);
        buf = buf.slice(i + 2);
        let type = 'message';
        const data = [];
        for (const line of block.split('\n')) {
          if (line.startsWith(':')) continue;
          const c = line.indexOf(':');
          const field = c < 0 ? line : line.slice(0, c);
          const val = c < 0 ? '' : line.slice(c + 1).replace(/^ /, '');
          if (field === 'event') type = val;
          else if (field === 'data') data.push(val);
        }
        if (data.length) on(type, JSON.parse(data.join('\n')));
      }
    }
  }

  // Runs `f` now and every `ms` while the page is visible (one call at a time).
  function every(ms, f) {
    let busy = false;
    const tick = async () => {
      if (busy || document.hidden) return;
      busy = true;
      try { await f(); banner(null); } catch (e) { banner(e.message); } finally { busy = false; }
    };
    tick();
    return setInterval(tick, ms);
  }

  async function datasetOptions(select, selected) {
    const list = await api('/v1/datasets');
    clear(select);
    select.append(el('option', { value: '', text: '— choose a dataset —' }));
    for (const d of list.datasets || []) {
      select.append(el('option', { value: d.id, selected: d.id === selected, text: (d.name ? d.name + ' · ' : '') + d.id + ' (' + d.rows + ' rows)' }));
    }
  }

  // ---- Models ----
  function statsCells(tr, s) {
    s = s || {};
    for (const v of [s.requests, s.batches, s.rows, s.mean_batch_rows]) tr.append(el('td', { class: 'num', text: fmt(v) }));
    return s;
  }
  async function pageModels() {
    const tbody = $('#models-table tbody');
    every(2000, async () => {
      const list = await api('/v1/models');
      clear(tbody);
      $('#models-empty').hidden = (list.models || []).length > 0;
      for (const m of list.models || []) {
        for (const v of m.versions) {
          const tr = el('tr', {},
            el('td', {}, el('a', { href: '/console/models/' + enc(m.name), text: m.name })),
            el('td', { text: v.version + (m.default_version === v.version ? ' (default)' : '') }),
            el('td', {}, el('span', { class: 'state ' + String(v.state).toLowerCase(), text: v.state, title: v.error || undefined })));
          const s = statsCells(tr, v.stats);
          tr.append(el('td', { class: 'num', text: fmt(s.max_batch_rows) }), el('td', { class: 'num', text: fmt(s.queue_depth) }),
            el('td', { class: 'num', text: fmt(s.rejected_queue_full === undefined ? undefined : s.rejected_queue_full + s.rejected_deadline) }));
          tbody.append(tr);
        }
      }
    });
  }

  async function pageModel(name) {
    const select = $('#version');
    const tbody = $('#versions-table tbody');
    let meta = null;
    let first = true;
    every(2000, async () => {
      const list = await api('/v1/models');
      const m = (list.models || []).find((x) => x.name === name);
      if (!m) throw new ApiError(404, "model '" + name + "' not found");
      clear(tbody);
      for (const v of m.versions) {
        const tr = el('tr', {}, el('td', { text: v.version }), el('td', {}, el('span', { class: 'state ' + String(v.state).toLowerCase(), text: v.state, title: v.error || undefined })));
        const s = statsCells(tr, v.stats);
        tr.append(el('td', { class: 'num', text: fmt(s.queue_depth) }),
          el('td', { class: 'num', text: fmt(s.rejected_queue_full === undefined ? undefined : s.rejected_queue_full + s.rejected_deadline) }));
        tbody.append(tr);
      }
      const have = Array.from(select.options).map((o) => o.value).join(',');
      const want = m.versions.map((v) => v.version).join(',');
      if (have !== want) {
        const keep = select.value;
        clear(select);
        for (const v of m.versions) select.append(el('option', { value: v.version, text: v.version + (m.default_version === v.version ? ' (default)' : '') }));
        select.value = keep && want.split(',').includes(keep) ? keep : (m.default_version || m.versions[m.versions.length - 1].version);
        if (first) { first = false; await loadVersion(); }
      }
    });
    select.addEventListener('change', () => loadVersion().catch((e) => banner(e.message)));

    async function loadVersion() {
      meta = await api('/v1/models/' + enc(name) + '/versions/' + enc(select.value) + '/metadata');
      const k = (meta.metadata && meta.metadata.kiln) || {};
      const t = (meta.metadata && meta.metadata.training) || null;
      const input = (k.inputs || [])[0] || {};
      facts($('#signature'), [
        ['task', k.task || '–'],
        ['input', (input.name || 'input') + ' ' + (input.dtype || '') + ' ' + JSON.stringify(input.shape || [])],
        ['features', (input.features || []).join(', ') || 'raw tensor'],
        ['labels', (k.labels || []).join(', ') || undefined],
        ['outputs', (k.outputs || []).map((o) => o.name + ' ' + JSON.stringify(o.shape)).join(', ')],
      ]);
      if (t) {
        const m = t.metrics || {};
        facts($('#training-info'), [
          ['dataset', t.dataset], ['target', t.target], ['job', t.job ? el('a', { href: '/console/training/' + enc(t.job), text: t.job }) : undefined],
          ['trained at', when(t.trained_at)], ['epochs run', t.epochs_run], ['outcome', t.outcome], ['evaluated on', t.evaluated_on],
          ['loss function', t.loss],
        ].concat(Object.entries(m).filter(([, v]) => typeof v === 'number').map(([kk, v]) => [kk, v])));
        window.KilnCharts.confusion($('#training-confusion'), k.labels, m.confusion_matrix);
      } else {
        facts($('#training-info'), [['training', 'no training record (trained elsewhere)']]);
        clear($('#training-confusion'));
      }
      buildForm(k, input);
    }

    function buildForm(k, input) {
      const fields = clear($('#predict-fields'));
      clear($('#predict-result')); clear($('#explain-chart')); $('#explain-facts').textContent = '';
      const pre = ((k.preprocessing || {}).features) || [];
      const byName = Object.fromEntries(pre.map((f) => [f.name, f]));
      const names = input.features || [];
      if (names.length) {
        for (const n of names) {
          const f = byName[n] || {};
          let control;
          if (f.kind === 'categorical' && Array.isArray(f.categories)) {
            control = el('select', { name: n, 'data-kind': 'category' }, f.categories.map((c) => el('option', { value: c, text: c })));
          } else {
            control = el('input', { name: n, type: 'number', step: 'any', required: true, value: typeof f.fill === 'number' ? +f.fill.toPrecision(4) : undefined });
          }
          fields.append(el('label', {}, n + ' ', control));
        }
      } else {
        fields.append(el('label', { class: 'wide' }, 'Instance (a JSON array in the input\'s shape) ',
          el('textarea', { name: '__raw', rows: 3, required: true })));
      }
    }

    $('#predict-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const k = (meta.metadata && meta.metadata.kiln) || {};
      const form = ev.target;
      let instance;
      const raw = form.elements.namedItem('__raw');
      if (raw) {
        try { instance = JSON.parse(raw.value); } catch (e) { status($('#predict-result'), 'not JSON: ' + e.message, 'error'); return; }
      } else {
        instance = {};
        for (const c of form.querySelectorAll('[name]')) instance[c.name] = c.dataset.kind === 'category' ? c.value : Number(c.value);
      }
      const base = '/v1/models/' + enc(name) + '/versions/' + enc(select.value);
      const out = clear($('#predict-result'));
      try {
        if (k.task === 'classification' && !raw) {
          const r = await api(base + ':classify', { method: 'POST', body: { examples: [instance] } });
          const pairs = r.results[0].slice().sort((a, b) => b[1] - a[1]);
          out.append(el('p', {}, 'Label: ', el('strong', { id: 'predicted-label', text: pairs[0][0] })));
          out.append(el('table', { class: 'data scores' }, el('thead', {}, el('tr', {}, el('th', { text: 'label' }), el('th', { class: 'num', text: 'score' }))),
            el('tbody', {}, pairs.map(([l, s]) => el('tr', {}, el('td', { text: l }), el('td', { class: 'num', text: fmt(s) }))))));
        } else if (k.task === 'regression' && !raw) {
          const r = await api(base + ':regress', { method: 'POST', body: { examples: [instance] } });
          out.append(el('p', {}, 'Prediction: ', el('strong', { id: 'predicted-label', text: fmt(r.results[0]) })));
        } else {
          const r = await api(base + ':predict', { method: 'POST', body: { instances: [instance] } });
          out.append(el('pre', { id: 'predicted-label', text: JSON.stringify(r.predictions[0]) }));
        }
        const x = await api(base + ':explain', { method: 'POST', body: { instances: [instance] } });
        const e = x.explanations[0];
        const attr = e.attributions;
        const entries = Array.isArray(attr) ? attr.flat(Infinity).map((v, i) => [String(i), v]) : Object.entries(attr);
        window.KilnCharts.bars($('#explain-chart'), entries);
        $('#explain-facts').textContent = 'target ' + e.target + ': f(x) = ' + fmt(e.prediction) + ', baseline (' + x.baseline + ') f(x′) = ' +
          fmt(e.baseline_prediction) + ', completeness residual ' + fmt(e.completeness_residual) + ' (' + e.steps + ' steps)';
      } catch (e) {
        status(out, e.message, 'error');
      }
    });
  }

  // ---- Datasets ----
  async function pageDatasets() {
    const tbody = $('#datasets-table tbody');
    const refresh = async () => {
      const list = await api('/v1/datasets');
      clear(tbody);
      for (const d of list.datasets || []) {
        tbody.append(el('tr', {},
          el('td', {}, el('a', { href: '/console/datasets/' + enc(d.id), text: d.id })),
          el('td', { text: d.name || '' }), el('td', { class: 'num', text: fmt(d.rows) }),
          el('td', { class: 'num', text: fmt((d.columns || []).length) }), el('td', { class: 'num', text: fmt(d.duplicates) }),
          el('td', { text: when(d.created) })));
      }
    };
    refresh().catch((e) => banner(e.message));
    const drop = $('#drop');
    const file = $('#upload-file');
    const out = $('#upload-status');
    async function upload(f) {
      if (!f) return;
      const name = $('#upload-name').value.trim() || f.name.replace(/\.[^.]*$/, '');
      const json = /\.json$/i.test(f.name) || f.type === 'application/json';
      status(out, 'Uploading ' + f.name + ' (' + f.size + ' bytes)…');
      try {
        const d = await api('/v1/datasets?name=' + enc(name) + '&format=' + (json ? 'json' : 'csv'), {
          method: 'POST', body: f, headers: { 'Content-Type': json ? 'application/json' : 'text/csv' },
        });
        out.textContent = '';
        out.className = 'status ok';
        out.append('Uploaded ', el('a', { id: 'uploaded-link', href: '/console/datasets/' + enc(d.id), text: d.id }), ': ' + d.rows + ' rows, ' + d.columns.length + ' columns.');
        await refresh();
      } catch (e) {
        status(out, e.message, 'error');
      }
    }
    file.addEventListener('change', () => upload(file.files[0]));
    for (const ev of ['dragenter', 'dragover']) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add('over'); });
    for (const ev of ['dragleave', 'drop']) drop.addEventListener(ev, () => drop.classList.remove('over'));
    drop.addEventListener('drop', (e) => { e.preventDefault(); upload(e.dataTransfer.files[0]); });
  }

  async function pageDataset(id) {
    const d = await api('/v1/datasets/' + enc(id));
    facts($('#dataset-summary'), [['name', d.name || '–'], ['rows', d.rows], ['columns', (d.columns || []).length],
      ['duplicate rows', d.duplicates], ['format', d.format], ['size', d.size + ' bytes'], ['uploaded', when(d.created)]]);
    const tbody = $('#profile-table tbody');
    clear(tbody);
    for (const c of d.columns || []) {
      const cats = c.categories ? Object.entries(c.categories).map(([k, v]) => k + ' (' + v + ')').join(', ') : '';
      tbody.append(el('tr', {}, el('td', { text: c.name }), el('td', { text: c.dtype }),
        ...[c.missing, c.invalid, c.min, c.max, c.mean, c.std].map((v) => el('td', { class: 'num', text: fmt(v) })),
        el('td', { class: 'cats', text: cats })));
    }
  }

  // ---- Training ----
  async function pageTraining() {
    const dsSelect = $('#train-dataset');
    const target = $('#train-target');
    const wanted = new URLSearchParams(location.search).get('dataset');
    await datasetOptions(dsSelect, wanted);
    async function columns() {
      clear(target);
      if (!dsSelect.value) return;
      const d = await api('/v1/datasets/' + enc(dsSelect.value));
      const cols = d.columns || [];
      for (const c of cols) target.append(el('option', { value: c.name, text: c.name + ' (' + c.dtype + ')' }));
      target.value = cols.length ? cols[cols.length - 1].name : '';
      if (!$('#train-model').value && d.name) $('#train-model').value = d.name.replace(/[^A-Za-z0-9_.-]/g, '_').slice(0, 64);
    }
    dsSelect.addEventListener('change', () => columns().catch((e) => banner(e.message)));
    if (dsSelect.value) await columns();

    $('#train-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const out = $('#train-status');
      const spec = { model: $('#train-model').value.trim(), dataset: dsSelect.value, target: target.value };
      const task = $('#train-task').value;
      if (task) spec.task = task;
      const training = {};
      const num = (sel) => { const v = $(sel).value; return v === '' ? undefined : Number(v); };
      if (num('#train-epochs') !== undefined) training.epochs = num('#train-epochs');
      if (num('#train-batch') !== undefined) training.batch_size = num('#train-batch');
      if (num('#train-lr') !== undefined) training.optimizer = { type: 'adam', learning_rate: num('#train-lr') };
      if (num('#train-split') !== undefined) training.validation_split = num('#train-split');
      if (num('#train-seed') !== undefined) training.seed = num('#train-seed');
      if (Object.keys(training).length) spec.training = training;
      const extra = $('#train-extra').value.trim();
      if (extra) {
        try {
          const more = JSON.parse(extra);
          for (const [k, v] of Object.entries(more)) {
            spec[k] = k === 'training' && spec.training && v && typeof v === 'object' ? Object.assign({}, spec.training, v) : v;
          }
        } catch (e) { status(out, 'The extra spec is not JSON: ' + e.message, 'error'); return; }
      }
      try {
        status(out, 'Submitting…');
        const job = await api('/v1/training-jobs', { method: 'POST', body: spec });
        location.href = '/console/training/' + enc(job.id);
      } catch (e) {
        status(out, e.message, 'error');
      }
    });

    const tbody = $('#jobs-table tbody');
    every(2000, async () => {
      const list = await api('/v1/training-jobs?limit=50');
      clear(tbody);
      for (const j of list.jobs || []) {
        const p = j.progress;
        tbody.append(el('tr', {},
          el('td', {}, el('a', { href: '/console/training/' + enc(j.id), text: j.id })),
          el('td', { text: j.model }),
          el('td', {}, el('span', { class: 'state ' + j.state, text: j.state })),
          el('td', { text: p ? 'epoch ' + p.epoch + (p.epochs ? ' / ' + p.epochs : '') : '' }),
          el('td', {}, j.version ? el('a', { href: '/console/models/' + enc(j.model), text: String(j.version) }) : ''),
          el('td', { text: when(j.created_at) })));
      }
    });
  }

  async function pageJob(id) {
    let loss = null, metric = null, metricName = null;
    const cancel = $('#job-cancel');
    cancel.addEventListener('click', async () => {
      cancel.disabled = true;
      try { await api('/v1/training-jobs/' + enc(id) + ':cancel', { method: 'POST' }); } catch (e) { banner(e.message); }
      await show().catch((e) => banner(e.message));
    });

    async function show() {
      const j = await api('/v1/training-jobs/' + enc(id));
      const state = $('#job-state');
      state.textContent = j.state;
      state.className = 'state ' + j.state;
      cancel.hidden = ['succeeded', 'failed', 'cancelled'].includes(j.state);
      const spec = j.spec || {};
      const model = j.model;
      facts($('#job-summary'), [
        ['model', model ? el('a', { href: '/console/models/' + enc(model), text: model }) : '–'],
        ['version', j.version ? String(j.version) : undefined],
        ['dataset', j.dataset ? el('a', { href: '/console/datasets/' + enc(j.dataset), text: j.dataset }) : undefined],
        ['target', j.target], ['task', spec.task || undefined], ['started', j.started_at ? when(j.started_at) : undefined],
        ['finished', j.finished_at ? when(j.finished_at) : undefined], ['created', when(j.created_at)], ['error', j.error || undefined],
      ]);
      const m = j.metrics || {};
      facts($('#job-metrics'), Object.entries(m).filter(([, v]) => typeof v === 'number'));
      window.KilnCharts.confusion($('#job-confusion'), spec.labels, m.confusion_matrix);
      const r = j.report || {};
      facts($('#job-report'), [['rows', r.rows], ['duplicates dropped', r.duplicates_dropped], ['missing target dropped', r.missing_target_dropped],
        ['train rows', r.train_rows], ['validation rows', r.validation_rows], ['train rows dropped', r.train_rows_dropped],
        ['validation rows dropped', r.validation_rows_dropped]].filter(([, v]) => v !== undefined));
      const tbody = clear($('#job-columns tbody'));
      for (const c of r.columns || []) {
        tbody.append(el('tr', {}, el('td', { text: c.name }), el('td', { text: c.kind }),
          ...[c.missing, c.invalid, c.filled, c.clipped, (c.rows_dropped_missing || 0) + (c.rows_dropped_outliers || 0)].map((v) => el('td', { class: 'num', text: fmt(v) }))));
      }
      return j;
    }

    function onEpoch(e) {
      if (!loss) loss = window.KilnCharts.curves($('#loss-chart'), ['loss', 'val_loss']);
      const names = Object.keys(e.metrics || {});
      if (!metric && names.length) {
        metricName = names.find((n) => !n.startsWith('val_')) || names[0];
        metric = window.KilnCharts.curves($('#metric-chart'), [metricName, 'val_' + metricName]);
      }
      const x = e.epoch;
      loss.push(x, [e.loss, e.val_loss]);
      if (metric) metric.push(x, [e.metrics[metricName], e.metrics['val_' + metricName]]);
      $('#job-progress').textContent = 'epoch ' + e.epoch + ' / ' + e.epochs + (e.stage ? ' (' + e.stage + ')' : '') +
        ' · ' + fmt(e.samples_per_sec) + ' samples/s · eta ' + fmt(e.eta_seconds) + ' s';
    }

    await show();
    try {
      await events('/v1/training-jobs/' + enc(id) + '/events', (type, data) => {
        if (type === 'epoch') onEpoch(data);
        else if (type === 'error') banner(data.error);
      });
    } catch (e) {
      banner(e.message);
    }
    await show();
  }

  // ---- Evaluation ----
  async function pageEvaluate() {
    const modelSel = $('#eval-model');
    const versionSel = $('#eval-version');
    const models = (await api('/v1/models')).models || [];
    clear(modelSel);
    modelSel.append(el('option', { value: '', text: '— choose a model —' }));
    for (const m of models) modelSel.append(el('option', { value: m.name, text: m.name }));
    const params = new URLSearchParams(location.search);
    const versions = () => {
      clear(versionSel);
      const m = models.find((x) => x.name === modelSel.value);
      versionSel.append(el('option', { value: '', text: 'default' }));
      for (const v of (m ? m.versions : [])) versionSel.append(el('option', { value: v.version, text: v.version + ' (' + v.state + ')' }));
    };
    modelSel.addEventListener('change', versions);
    if (params.get('model')) { modelSel.value = params.get('model'); versions(); if (params.get('version')) versionSel.value = params.get('version'); }
    await datasetOptions($('#eval-dataset'), params.get('dataset'));

    $('#eval-form').addEventListener('submit', async (ev) => {
      ev.preventDefault();
      const out = $('#eval-status');
      const body = { dataset: $('#eval-dataset').value };
      const t = $('#eval-target').value.trim();
      if (t) body.target = t;
      const path = '/v1/models/' + enc(modelSel.value) + (versionSel.value ? '/versions/' + enc(versionSel.value) : '') + ':evaluate';
      clear($('#eval-metrics')); clear($('#eval-confusion')); clear($('#eval-residuals'));
      $('#eval-classes').hidden = true;
      try {
        status(out, 'Evaluating…');
        const r = await api(path, { method: 'POST', body: body });
        status(out, 'Version ' + r.version + ' of ' + r.model + ' on ' + r.rows_used + ' of ' + r.rows + ' rows.', 'ok');
        const dropped = Object.entries(r.rows_dropped || {}).filter(([, v]) => v > 0).map(([k, v]) => k + ': ' + v).join(', ');
        facts($('#eval-metrics'), [['task', r.task], ['target', r.target], [r.loss_name || 'loss', r.loss], ['rows dropped', dropped || 'none'],
          ['unknown categories', r.unknown_categories]].concat(Object.entries(r.metrics || {}).filter(([, v]) => typeof v === 'number')));
        if (r.per_class) {
          const tb = clear($('#eval-classes tbody'));
          for (const c of r.per_class) tb.append(el('tr', {}, el('td', { text: c.label }), ...[c.precision, c.recall, c.f1, c.support].map((v) => el('td', { class: 'num', text: fmt(v) }))));
          $('#eval-classes').hidden = false;
        }
        if (r.metrics && r.metrics.confusion_matrix) {
          window.KilnCharts.confusion($('#eval-confusion'), (r.per_class || []).map((c) => c.label), r.metrics.confusion_matrix);
        }
        if (r.residuals) window.KilnCharts.residuals($('#eval-residuals'), r.residuals);
      } catch (e) {
        status(out, e.message, 'error');
      }
    });
  }

  // ---- start ----
  function init() {
    showKeyState();
    $('#key-button').addEventListener('click', () => askKey('Enter the API key to use from now on.', true).then(() => location.reload(), () => {}));
    $('#key-forget').addEventListener('click', () => { setKey(null); $('#key-dialog').close('cancel'); });
    $('#key-cancel').addEventListener('click', () => $('#key-dialog').close('cancel'));
    $('#key-dialog').addEventListener('cancel', () => { $('#key-dialog').returnValue = 'cancel'; });
    const page = document.body.dataset.page;
    const id = document.body.dataset.id;
    const run = {
      models: pageModels, model: pageModel, datasets: pageDatasets, dataset: pageDataset,
      training: pageTraining, job: pageJob, evaluate: pageEvaluate,
    }[page];
    if (run) Promise.resolve(run(id)).catch((e) => banner(e.message));
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', init);
  else init();
})();
