// The page: talks to the captioning worker, shows models, progress, captions and errors.
// It never touches model bytes itself.

const $ = (id) => document.getElementById(id);
const worker = new Worker('./worker.js', { type: 'module' });
const pending = new Map();
let nextId = 1;
let state = { models: null, ready: false, busy: false };

function call(op, fields = {}, transfer = []) {
  const id = nextId++;
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker.postMessage({ id, op, ...fields }, transfer);
  });
}

worker.onmessage = (event) => {
  const msg = event.data;
  if (msg.type === 'progress') return showProgress(msg);
  if (msg.type === 'log') return console.info('[meacap]', msg.text);
  const waiter = pending.get(msg.id);
  if (!waiter) return;
  pending.delete(msg.id);
  if ('error' in msg) waiter.reject(new Error(msg.error));
  else waiter.resolve(msg.result);
};
worker.onerror = (event) => showError(`the captioning worker failed to start: ${event.message || 'unknown error'} (is the page served over http://localhost or https?)`);

// ---- formatting -------------------------------------------------------------------------------

function bytes(n) {
  if (n < 1024) return `${n} B`;
  const units = ['KB', 'MB', 'GB'];
  let v = n, u = -1;
  do { v /= 1024; u++; } while (v >= 1024 && u < units.length - 1);
  return `${v.toFixed(v < 10 ? 1 : 0)} ${units[u]}`;
}

function showError(text) {
  $('error').textContent = text;
  $('error').hidden = !text;
}

function setStatus(id, text) {
  $(id).textContent = text;
}

// ---- models -----------------------------------------------------------------------------------

function renderModels(models) {
  state.models = models;
  const body = $('models').querySelector('tbody');
  body.replaceChildren();
  let total = 0, missing = 0;
  for (const m of models) {
    const size = m.files.reduce((s, f) => s + f.size, 0);
    const need = m.files.filter((f) => !f.stored).reduce((s, f) => s + f.size, 0);
    total += size;
    missing += need;
    const tr = document.createElement('tr');
    tr.dataset.role = m.role;
    for (const text of [m.source ? `${m.role} (${m.source})` : m.role, String(m.files.length), bytes(size), need ? `to download: ${bytes(need)}` : 'stored']) {
      const td = document.createElement('td');
      td.textContent = text;
      tr.append(td);
    }
    body.append(tr);
  }
  $('models').hidden = false;
  $('models-summary').textContent = missing
    ? `${bytes(total)} of models; ${bytes(missing)} still to download and store in this browser.`
    : `${bytes(total)} of models, all stored in this browser.`;
  $('load').textContent = missing ? `Download ${bytes(missing)} and load` : 'Load models';
  $('load').disabled = false;
  return missing;
}

const phases = { download: 'downloading', verify: 'verifying', upload: 'loading onto the device' };

function showProgress(p) {
  $('progress').hidden = false;
  const fraction = p.total ? p.done / p.total : 0;
  $('progress-fill').style.width = `${(100 * fraction).toFixed(1)}%`;
  const what = p.file ? `${p.file} (${bytes(p.done)} of ${bytes(p.total)})` : p.role;
  $('progress-text').textContent = `${phases[p.phase] || p.phase} ${what}`;
  const row = $('models').querySelector(`tr[data-role="${p.role}"] td:last-child`);
  if (row) row.textContent = p.phase === 'upload' && p.done ? 'loaded' : phases[p.phase] || p.phase;
}

let source = { kind: 'origin', base: './' };

async function inspect() {
  try {
    const found = await call('inspect', { source });
    const missing = renderModels(found.models);
    if (!missing) await load();
  } catch (e) {
    $('models-summary').textContent = 'No models yet.';
    showError(e.message);
    $('load').disabled = true;
  }
}

async function load() {
  if (state.busy) return;
  state.busy = true;
  $('load').disabled = true;
  showError('');
  try {
    const done = await call('load', { source });
    renderModels(done.models);
    for (const row of $('models').querySelectorAll('tbody tr td:last-child')) row.textContent = 'loaded';
    state.ready = true;
    $('progress').hidden = true;
    $('models-summary').textContent += ` Ready (loaded in ${(done.timings.load_ms / 1000).toFixed(1)} s, warm-up ${(done.timings.warmup_ms / 1000).toFixed(1)} s).`;
    document.body.dataset.ready = 'true';
    await applySettings();
    if (queued) { const q = queued; queued = null; await caption(q.bytes, q.name); }
  } catch (e) {
    showError(e.message);
    $('progress').hidden = true;
    $('load').disabled = false;
  } finally {
    state.busy = false;
  }
}

$('load').onclick = load;
$('folder').onchange = async () => {
  const files = [...$('folder').files];
  if (!files.length) return;
  source = { kind: 'folder', files };
  await inspect();
};
$('clear').onclick = async () => {
  if (!confirm('Remove every stored model file from this browser? They will have to be downloaded again.')) return;
  await call('clear');
  state.ready = false;
  document.body.dataset.ready = 'false';
  $('models-summary').textContent = 'Stored models removed. Reload the page to use the models again.';
};

// ---- images -----------------------------------------------------------------------------------

let queued = null;

async function caption(buffer, name) {
  if (!state.ready) {
    queued = { bytes: buffer, name };
    setStatus('caption', '');
    showError('The models are not loaded yet: the image will be captioned as soon as they are.');
    return;
  }
  showError('');
  $('result').hidden = false;
  $('caption').textContent = 'Captioning…';
  document.body.dataset.captioning = 'true';
  const started = performance.now();
  try {
    const result = await call('caption', { image: buffer, name }, [buffer]);
    renderResult(result, performance.now() - started);
  } catch (e) {
    $('caption').textContent = '';
    showError(`${name}: ${e.message}`);
  } finally {
    document.body.dataset.captioning = 'false';
  }
}

function renderResult(r, wallMs) {
  $('caption').textContent = r.caption;
  $('concepts').replaceChildren(...r.concepts.map((c) => Object.assign(document.createElement('li'), { textContent: c })));
  const memory = $('memory').querySelector('tbody');
  memory.replaceChildren(...r.memory.map((hit, i) => {
    const tr = document.createElement('tr');
    for (const text of [String(i + 1), hit.caption, hit.score.toFixed(4)]) tr.append(Object.assign(document.createElement('td'), { textContent: text }));
    return tr;
  }));
  const timings = $('timings').querySelector('tbody');
  const rows = Object.entries(r.timings_ms).map(([stage, ms]) => [stage.replace(/_/g, ' '), `${ms.toFixed(1)} ms`]);
  rows.push(['total (with messaging)', `${wallMs.toFixed(1)} ms`]);
  timings.replaceChildren(...rows.map(([a, b]) => {
    const tr = document.createElement('tr');
    tr.append(Object.assign(document.createElement('td'), { textContent: a }), Object.assign(document.createElement('td'), { textContent: b }));
    return tr;
  }));
  if (r.runtime_errors) {
    showError(`The GPU runtime reported ${r.runtime_errors.length} error(s) in this browser, so this caption may be wrong `
      + `(details in the console). Reload with ?backend=cpu to caption on the CPU. First: ${r.runtime_errors[0].split('\n')[0]}`);
  }
  $('caption').dataset.done = 'true';
}

async function takeFile(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith('image/')) return showError(`${file.name} is not an image (${file.type}).`);
  $('preview').src = URL.createObjectURL(file);
  $('preview').hidden = false;
  $('caption').dataset.done = 'false';
  await caption(await file.arrayBuffer(), file.name);
}

$('image').onchange = () => takeFile($('image').files[0]);
const drop = $('drop');
drop.ondragover = (e) => { e.preventDefault(); drop.classList.add('over'); };
drop.ondragleave = () => drop.classList.remove('over');
drop.ondrop = (e) => { e.preventDefault(); drop.classList.remove('over'); takeFile(e.dataTransfer.files[0]); };
document.onpaste = (e) => {
  const item = [...(e.clipboardData?.items || [])].find((i) => i.type.startsWith('image/'));
  if (item) takeFile(item.getAsFile());
};

async function applySettings() {
  try {
    await call('options', { order: $('order').value, beam: Number($('beam').value), memory: Number($('memory-k').value) });
  } catch (e) {
    showError(e.message);
  }
}
for (const id of ['order', 'beam', 'memory-k']) $(id).onchange = applySettings;

// ---- start ------------------------------------------------------------------------------------

async function start() {
  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.register('./sw.js').then(() => navigator.serviceWorker.ready).then(() => {
      setStatus('offline', 'The page itself is stored too: it opens without a network next time.');
      document.body.dataset.offlineReady = 'true';
    }).catch((e) => setStatus('offline', `This page cannot be stored for offline use (${e.message}).`));
  }
  const backend = new URLSearchParams(location.search).get('backend') || 'auto';
  try {
    const dev = await call('init', { backend });
    setStatus('device', dev.webgpu ? `Running on ${dev.device} through WebGPU${dev.software ? ' (a software adapter: slow)' : ''}.` : `Running on ${dev.device}.`);
    document.body.dataset.backend = dev.webgpu ? 'webgpu' : 'cpu';
    if (dev.notice) {
      $('notice').textContent = dev.notice;
      $('notice').hidden = false;
    }
  } catch (e) {
    setStatus('device', 'No device.');
    return showError(e.message);
  }
  await inspect();
}

start();
