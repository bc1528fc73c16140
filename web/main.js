// The walsh page: opens the engine (web/pkg, built by `cargo xtask web`) on WebGPU, or on
// the CPU where there is none, downloads a model (or takes it from the page's cache),
// streams generated text and runs the benchmark suites.
//
// `document.body.dataset.state` says where the page is (loading, ready, generating,
// benchmarking, recovering, done, error), `dataset.device` where the engine runs (webgpu,
// cpu), and `window.walsh` holds the last generation and report: the end-to-end test
// (xtask/node/e2e.mjs) waits on and reads these.

const $ = (id) => document.getElementById(id);

// Model files are cached under URLs keyed by their sha256 (web/models.json): a new
// version of a model is a new key, and a second visit loads without the network.
const MODEL_CACHE = 'walsh-models-v1';
// Models opened from this computer are cached in the same cache, under
// local-models/ID/FILE (ID from the files' names, sizes and dates), with a manifest
// (LOCAL_MANIFEST) that the model list reads after a reload.
const LOCAL_PREFIX = 'local-models/';
const LOCAL_MANIFEST = 'walsh-local-model.json';
// localStorage key of the decode-GEMV timings (bench::tune::TuningCache, keyed inside by
// adapter and kernels, so one entry serves every adapter and build).
const TUNING_KEY = 'walsh-tuning-v1';

const state = {
  wasm: null,
  engine: null,
  models: [],
  busy: false,
  loaded: false,
  modelUrl: null,
  // Models opened from this computer this visit, by id: {manifest, files: {name: File}}.
  local: {},
};
window.walsh = {
  last: null,
  lastReport: null,
  // [file name, contents] of a report, as `walsh bench --out` writes them.
  reportFiles: (json) => JSON.parse(state.wasm.Engine.report_files(json)),
  // Where the last model came from (`network` or `cache`) and any notice about caching.
  lastLoad: null,
  // The decode GEMV the engine measured fastest, by weight format (empty on the CPU), and
  // whether the last load measured it (false: from localStorage).
  gemv: null,
  gemvMeasured: null,
  // Bounds the kernel suite's widths (`?max_kernel_n=`); undefined: the page's 4096.
  setMaxKernelN: (n) => state.engine.set_max_kernel_n(n),
  // Destroys the GPU device, as a driver reset would lose it (the recovery test).
  loseDevice: () => state.engine.lose_device(),
  cachedModels: () => cachedModels(),
  memory: () => state.engine.memory(),
  // Greedy generation straight through the engine with a no-op callback (no page work per
  // token): `cargo xtask web-bench --ratio` compares it with runs through the page.
  engineOnly: async (prompt, tokens) => {
    const options = { max_tokens: tokens, temperature: 0, top_k: 0, top_p: 1, seed: 0 };
    return JSON.parse(await state.engine.generate(prompt, JSON.stringify(options), () => {}))
      .stats;
  },
};

function setState(name) {
  document.body.dataset.state = name;
}

function mib(bytes) {
  return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
}

function rate(count, seconds) {
  return seconds > 0 ? `${(count / seconds).toFixed(1)} tok/s` : '–';
}

function showMessage(message) {
  $('failure-message').textContent = message;
  $('failure').hidden = false;
}

function showFailure(message) {
  showMessage(message);
  setState('error');
}

function showNotice(message) {
  $('notice').textContent = message ?? '';
  $('notice').hidden = !message;
}

function errorText(e) {
  return e && e.message ? e.message : String(e);
}

// ---- start-up ---------------------------------------------------------------------------

async function main() {
  // The page itself, for offline visits (sw.js); the models have their own cache.
  if ('serviceWorker' in navigator) {
    navigator.serviceWorker.register('sw.js').catch(() => {});
  }
  try {
    state.wasm = await import('./pkg/walsh.js');
    await state.wasm.default();
  } catch (e) {
    showFailure('Could not load the WebAssembly engine from pkg/walsh.js: build it with ' +
      `\`cargo xtask web\` and serve with \`walsh serve\`. (${errorText(e)})`);
    return;
  }
  $('version').textContent = `walsh ${state.wasm.Engine.version()}`;
  const why = await openEngine();
  if (why) {
    openCpu(why);
  }
  setupTabs();
  setupGenerate();
  setupBench();
  setupCache();
  setupLocal();

  try {
    state.models = await (await fetch('models.json')).json();
  } catch (e) {
    showFailure(`Could not read models.json: ${errorText(e)}`);
    return;
  }
  const select = $('model');
  for (const m of state.models) {
    const option = document.createElement('option');
    option.value = m.url;
    // The download size (models.json's `bytes`: weights and config) beside the name.
    option.textContent = m.bytes ? `${m.name} — ${mib(m.bytes)}` : m.name;
    select.append(option);
  }
  await listLocalModels();
  const params = new URLSearchParams(location.search);
  const wanted = params.get('model');
  if (wanted) select.value = state.models.find((m) => m.name === wanted)?.url ?? select.value;
  select.addEventListener('change', () => loadModel(select.value));
  await loadModel(select.value);
}

// Opens the engine on WebGPU; returns why it could not (null on success).
async function openEngine() {
  if (!('gpu' in navigator) || !navigator.gpu) {
    return 'This browser does not expose WebGPU (navigator.gpu is missing).';
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
  } catch (e) {
    adapter = null;
  }
  if (!adapter) {
    return 'WebGPU is present but offered no adapter: the GPU may be blocklisted or ' +
      'hardware acceleration may be off.';
  }
  // ?max_binding=BYTES checks, splits and steps models as on a device with that storage-
  // binding limit (a phone's is often 128 MiB).
  const cap = Number(new URLSearchParams(location.search).get('max_binding'));
  try {
    state.engine = await state.wasm.Engine.open(adapterLabel(adapter), cap > 0 ? cap : undefined);
  } catch (e) {
    return `WebGPU could not open a device: ${errorText(e)}`;
  }
  // ?fuse=on|off fuses the decode step or not (as WALSH_FUSE natively); by default the
  // engine fuses it on GPUs only.
  const fuse = new URLSearchParams(location.search).get('fuse');
  if (fuse === 'on' || fuse === 'off') state.engine.set_fusion(fuse === 'on');
  // ?max_kernel_n=N bounds the Benchmark tab's kernel suite to widths up to N (as
  // `walsh bench --max-kernel-n`): on a software adapter the whole suite takes ~20 minutes.
  const maxKernelN = Number(new URLSearchParams(location.search).get('max_kernel_n'));
  if (maxKernelN > 0) state.engine.set_max_kernel_n(maxKernelN);
  // ?gemv=NAME runs that decode GEMV instead of the measured choice (as WALSH_TUNE=NAME
  // natively), to compare the GEMVs in whole steps.
  const gemv = new URLSearchParams(location.search).get('gemv');
  if (gemv) {
    try {
      state.engine.force_gemv(gemv);
    } catch (e) {
      return `?gemv: ${errorText(e)}`;
    }
  }
  document.body.dataset.device = 'webgpu';
  $('nogpu').hidden = true;
  showAdapter(JSON.parse(state.engine.adapter()));
  return null;
}

function openCpu(why) {
  state.engine = state.wasm.Engine.open_cpu();
  document.body.dataset.device = 'cpu';
  $('nogpu-reason').textContent = why;
  $('nogpu').hidden = false;
  $('adapter').hidden = true;
  $('tab-bench').hidden = true;
}

// A name for the adapter: what `GPUAdapter.info` says, or, where the browser leaves it
// empty (Firefox does), the browser's own name.
function adapterLabel(adapter) {
  const info = adapter.info ?? {};
  const label = [info.vendor, info.architecture, info.description]
    .filter((s) => s).join(' ');
  if (label) return label;
  const ua = navigator.userAgent;
  const known = [['Firefox', /Firefox\/(\d+)/], ['Edge', /Edg\/(\d+)/],
    ['Chromium', /Chrom(?:e|ium)\/(\d+)/], ['Safari', /Version\/(\d+).*Safari/]];
  const found = known.map(([name, re]) => [name, ua.match(re)]).find(([, m]) => m);
  const browser = found ? `${found[0]} ${found[1][1]}` : 'this browser';
  return `${browser}'s WebGPU adapter (the browser does not name it)`;
}

function showAdapter(a) {
  $('adapter-name').textContent = `${a.name || 'WebGPU adapter'} (${a.backend}, ${a.device_type})` +
    (a.driver ? ` · ${a.driver}` : '');
  const chips = [
    ['shader-f16', a.shader_f16],
    ['subgroups', a.subgroup],
    ['timestamp-query', a.timestamp_query],
    [`workgroup storage ${a.max_workgroup_storage_bytes / 1024} KiB`, true],
    // Below 1 MiB (a ?max_binding= preview) in KiB.
    [`storage binding ${a.max_storage_buffer_binding_bytes < (1 << 20)
      ? `${a.max_storage_buffer_binding_bytes / 1024} KiB`
      : mib(a.max_storage_buffer_binding_bytes)}`, true],
  ];
  const list = $('adapter-features');
  list.replaceChildren(...chips.map(([name, on]) => {
    const li = document.createElement('li');
    li.textContent = name;
    if (!on) li.className = 'off';
    li.title = on ? 'available' : 'not available (walsh uses its portable path)';
    return li;
  }));
  $('adapter').hidden = false;
}

function setupTabs() {
  $('tabs').hidden = false;
  const tabs = { generate: $('tab-generate'), bench: $('tab-bench') };
  const panels = { generate: $('panel-generate'), bench: $('panel-bench') };
  const select = (name) => {
    for (const k of Object.keys(tabs)) {
      tabs[k].setAttribute('aria-selected', String(k === name));
      panels[k].hidden = k !== name;
    }
  };
  tabs.generate.addEventListener('click', () => select('generate'));
  tabs.bench.addEventListener('click', () => select('bench'));
  select('generate');
}

function setBusy(busy) {
  state.busy = busy;
  $('generate').disabled = busy || !state.loaded;
  $('bench-run').disabled = busy || !state.engine.on_gpu();
  $('model').disabled = busy;
  $('cache-clear').disabled = busy;
  $('local-files').disabled = busy;
  $('local-folder').disabled = busy;
}

// A run (generate or bench) ended: its stop button goes off, and the page is free again
// unless it is recovering from a failed GPU (reloading the model frees it then).
function endRun(stopId) {
  $(stopId).disabled = true;
  if (document.body.dataset.state !== 'recovering') setBusy(false);
}

// ---- models -----------------------------------------------------------------------------

function cacheKey(url, sha256) {
  return new URL(`${url}?sha256=${sha256}`, location.href).href;
}

async function openCache() {
  try {
    return 'caches' in window ? await caches.open(MODEL_CACHE) : null;
  } catch (e) {
    return null; // storage off (private windows, some embedded views): no cache
  }
}

async function download(url, progress) {
  const response = await fetch(url, { cache: 'no-store' });
  if (!response.ok) throw new Error(`downloading ${url}: HTTP ${response.status} ${response.statusText}`);
  const total = Number(response.headers.get('content-length')) || null;
  const reader = response.body.getReader();
  const parts = [];
  let received = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    parts.push(value);
    received += value.length;
    progress?.(received, total);
  }
  const bytes = new Uint8Array(received);
  let at = 0;
  for (const p of parts) {
    bytes.set(p, at);
    at += p.length;
  }
  return bytes;
}

async function sha256(bytes) {
  const digest = await crypto.subtle.digest('SHA-256', bytes);
  return [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, '0')).join('');
}

// config.json's text and model.safetensors' bytes of `model`: from the cache when both
// are there, else downloaded, checked against models.json's sha256 and cached.
async function modelFiles(model, progress) {
  const files = [
    { name: 'config.json', url: `${model.url}/config.json`, sha256: model.config_sha256 },
    { name: 'model.safetensors', url: `${model.url}/model.safetensors`, sha256: model.sha256 },
  ];
  const cache = await openCache();
  if (cache) {
    const hits = await Promise.all(files.map((f) => cache.match(cacheKey(f.url, f.sha256))));
    if (hits.every((h) => h)) {
      const [config, weights] = await Promise.all([hits[0].text(), hits[1].arrayBuffer()]);
      return { config, weights: new Uint8Array(weights), source: 'cache', note: null };
    }
  }
  const bytes = [await download(files[0].url), await download(files[1].url, progress)];
  if (globalThis.crypto?.subtle) {
    for (const [i, f] of files.entries()) {
      const got = await sha256(bytes[i]);
      if (got !== f.sha256) {
        throw new Error(`${f.url} has sha256 ${got}, but models.json lists ${f.sha256}: ` +
          'the file changed on the server (update models.json) or the download was damaged');
      }
    }
  }
  let note = null;
  if (cache) {
    try {
      // Older versions of this model go first: a new hash is a new key.
      for (const request of await cache.keys()) {
        if (files.some((f) => request.url.startsWith(new URL(f.url, location.href).href))) {
          await cache.delete(request);
        }
      }
      for (const [i, f] of files.entries()) {
        await cache.put(cacheKey(f.url, f.sha256), new Response(bytes[i], {
          headers: { 'content-type': i === 0 ? 'application/json' : 'application/octet-stream' },
        }));
      }
    } catch (e) {
      // Half a model is no use: drop what was stored.
      for (const f of files) await cache.delete(cacheKey(f.url, f.sha256)).catch(() => {});
      note = e?.name === 'QuotaExceededError'
        ? `The model was not saved for offline use: the browser's storage quota for this ` +
          `site is full (${errorText(e)}). It works now and will be downloaded again next ` +
          'visit; free space with “Clear cached models” or in the browser\'s site settings.'
        : `The model was not saved for offline use: ${errorText(e)}`;
    }
  }
  return { config: new TextDecoder().decode(bytes[0]), weights: bytes[1], source: 'network', note };
}

// Loads `url`'s model. An engine whose GPU failed is replaced first; a load that makes
// the GPU fail (out of memory) is tried once more on a new engine.
async function loadModel(url, retry = true) {
  if (state.engine.gpu_failure()) await reopenEngine();
  const localId = url.startsWith('local:') ? url.slice('local:'.length) : null;
  const model = localId ? null : state.models.find((m) => m.url === url);
  $('model-about').textContent = model?.about ?? '';
  const previousUrl = state.modelUrl;
  state.loaded = false;
  state.modelUrl = url;
  setBusy(true);
  setState('loading');
  const bar = $('download');
  const label = $('download-label');
  bar.value = 0;
  label.textContent = 'loading…';
  let name = url;
  try {
    let files;
    if (localId) {
      label.textContent = 'reading the model on this computer…';
      files = await localFiles(localId);
      name = files.name;
    } else {
      if (!model) throw new Error('it is not in models.json');
      files = await modelFiles(model, (received, total) => {
        if (total) {
          bar.value = received / total;
          label.textContent = `${mib(received)} of ${mib(total)}`;
        } else {
          bar.removeAttribute('value');
          label.textContent = mib(received);
        }
      });
    }
    window.walsh.lastLoad = { source: files.source, note: files.note };
    // The decode GEMVs are measured once per adapter and model shape; the choice lives in
    // localStorage (see bench::tune in the crate). Storage may be off: then it measures
    // on every load.
    let tuning = null;
    try { tuning = localStorage.getItem(TUNING_KEY); } catch (_) { /* storage disabled */ }
    if (state.engine.on_gpu()) label.textContent = 'uploading (timing the decode kernels on a first load)…';
    const info = JSON.parse(files.gguf
      ? await state.engine.load_gguf(files.name, files.gguf, tuning)
      : await state.engine.load_model(files.name ?? url, files.config, files.weights, tuning,
        files.tokenizer ?? null, files.tokenizerConfig ?? null));
    window.walsh.model = info;
    if (info.tuning_cache) {
      try { localStorage.setItem(TUNING_KEY, info.tuning_cache); } catch (_) { /* full or off */ }
    }
    window.walsh.gemv = info.gemv;
    window.walsh.gemvMeasured = Boolean(info.tuning_cache);
    bar.value = 1;
    const from = { cache: 'from the page\'s cache', network: 'downloaded', disk: 'read from this computer' };
    label.textContent = `${info.variant}: ${info.params.toLocaleString()} parameters ` +
      `(attention ${info.attention_params.toLocaleString()}), d=${info.hidden_size}, ` +
      `${info.layers} layers, ${info.heads} heads (${info.kv_heads} KV), ` +
      `vocabulary ${info.vocab_size.toLocaleString()} (${info.tokenizer} tokenizer), ` +
      `context ${info.context}, ${mib(info.bytes)} ${from[files.source] ?? ''}`;
    if (localId) {
      await keepLocal(localId, files);
      await listLocalModels();
    }
    showNotice(files.note);
    state.loaded = true;
    updateMemory();
    await updateCacheStatus();
    setState('ready');
  } catch (e) {
    label.textContent = '';
    if (localId && !state.local[localId]?.cached) delete state.local[localId];
    // A model file refused before upload leaves the previous model loaded and usable.
    if (state.engine.model()) {
      state.loaded = true;
      state.modelUrl = previousUrl;
      $('model').value = previousUrl;
    }
    await updateCacheStatus();
    setBusy(false);
    if (retry && state.engine.gpu_failure()) {
      await loadModel(url, false);
      return;
    }
    showFailure(`${localId ? 'Opening' : 'Loading'} ${name}: ${errorText(e)}`);
  } finally {
    setBusy(false);
  }
}

function updateMemory() {
  const json = state.engine.memory();
  if (!json) {
    $('stat-memory').textContent = 'none (CPU)';
    return;
  }
  const m = JSON.parse(json);
  $('stat-memory').textContent = `${mib(m.current_bytes)} (peak ${mib(m.peak_bytes)})`;
}

// ---- the model cache --------------------------------------------------------------------

// [{url, bytes}] of every cached file.
async function cachedModels() {
  const cache = await openCache();
  if (!cache) return [];
  const out = [];
  for (const request of await cache.keys()) {
    const response = await cache.match(request);
    out.push({ url: request.url, bytes: (await response.clone().arrayBuffer()).byteLength });
  }
  return out;
}

async function updateCacheStatus() {
  const status = $('cache-status');
  if (!(await openCache())) {
    status.textContent = 'This browser gives the page no storage: models are downloaded on every visit.';
    $('cache-clear').hidden = true;
    return;
  }
  const files = await cachedModels();
  const weights = files.filter((f) => (f.url.includes('/model.safetensors') &&
    !f.url.includes(`/${LOCAL_PREFIX}`)) || f.url.endsWith(`/${LOCAL_MANIFEST}`));
  const bytes = files.reduce((sum, f) => sum + f.bytes, 0);
  status.textContent = weights.length === 0
    ? 'No model is saved for offline use.'
    : `${weights.length} model(s) saved for offline use, ${mib(bytes)}.`;
}

function setupCache() {
  $('cache-clear').addEventListener('click', async () => {
    await caches.delete(MODEL_CACHE).catch(() => {});
    await listLocalModels();
    await updateCacheStatus();
  });
}

// ---- models from this computer ------------------------------------------------------------

function setupLocal() {
  for (const id of ['local-files', 'local-folder']) {
    const input = $(id);
    input.addEventListener('change', async () => {
      const files = [...input.files];
      input.value = '';
      if (files.length > 0 && !state.busy) await openLocal(files);
    });
  }
}

// A short, stable hash of a string (FNV-1a), for the cache key of a local model.
function fnv1a(text) {
  let h = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    h ^= text.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(16).padStart(8, '0');
}

// The model in a selection of files: one .gguf file, or a folder's config.json and
// model.safetensors with its tokenizer.json and tokenizer_config.json (the files nearest
// the folder's top). Throws, saying what is expected, when there is neither.
function pickLocal(files) {
  const depth = (f) => (f.webkitRelativePath || f.name).split('/').length;
  const sorted = [...files].sort((a, b) => depth(a) - depth(b));
  const named = (n) => sorted.find((f) => f.name === n);
  const config = named('config.json');
  const weights = named('model.safetensors');
  const ggufs = sorted.filter((f) => f.name.toLowerCase().endsWith('.gguf'));
  const folder = sorted[0]?.webkitRelativePath?.split('/')[0] || null;
  let picked;
  if (config && weights) {
    picked = { kind: 'folder', name: folder ?? 'model folder',
      files: { 'config.json': config, 'model.safetensors': weights } };
    for (const n of ['tokenizer.json', 'tokenizer_config.json']) {
      if (named(n)) picked.files[n] = named(n);
    }
  } else if (ggufs.length === 1) {
    picked = { kind: 'gguf', name: ggufs[0].name, files: { [ggufs[0].name]: ggufs[0] } };
  } else {
    const names = sorted.slice(0, 6).map((f) => f.name).join(', ');
    throw new Error(ggufs.length > 1
      ? `choose one .gguf file, not ${ggufs.length}`
      : 'choose a .gguf file, or a folder (or its files) with config.json and ' +
        `model.safetensors: the selection has ${names}${sorted.length > 6 ? ', …' : ''}`);
  }
  const list = Object.values(picked.files);
  const key = list.map((f) => `${f.name}:${f.size}:${f.lastModified}`).join('|');
  const bytes = list.reduce((sum, f) => sum + f.size, 0);
  picked.id = `${picked.name.replace(/[^A-Za-z0-9._-]+/g, '_').slice(0, 60)}-${fnv1a(key)}`;
  picked.manifest = { id: picked.id, name: picked.name, kind: picked.kind,
    files: Object.keys(picked.files), bytes };
  return picked;
}

// Opens files the visitor chose (a .gguf file or a model folder): read here, never sent.
async function openLocal(files) {
  $('failure').hidden = true;
  let picked;
  try {
    picked = pickLocal(files);
  } catch (e) {
    showFailure(`Opening a model from this computer: ${errorText(e)}`);
    return;
  }
  state.local[picked.id] = { manifest: picked.manifest, files: picked.files, cached: false };
  await loadModel(`local:${picked.id}`);
}

function localKey(id, file) {
  return new URL(`${LOCAL_PREFIX}${encodeURIComponent(id)}/${encodeURIComponent(file)}`,
    location.href).href;
}

// The engine's inputs for a local model: from the files chosen this visit, else from the
// page's cache.
async function localFiles(id) {
  const open = state.local[id];
  const read = async (name, asText) => {
    if (open) {
      const f = open.files[name];
      return asText ? f.text() : new Uint8Array(await f.arrayBuffer());
    }
    const cache = await openCache();
    const hit = cache && await cache.match(localKey(id, name));
    if (!hit) throw new Error(`${name} is no longer in the page's cache: open the model again`);
    return asText ? hit.text() : new Uint8Array(await hit.arrayBuffer());
  };
  let manifest = open?.manifest;
  if (!manifest) {
    const cache = await openCache();
    const hit = cache && await cache.match(localKey(id, LOCAL_MANIFEST));
    if (!hit) throw new Error('it is no longer in the page\'s cache: open it again');
    manifest = await hit.json();
  }
  const source = open ? 'disk' : 'cache';
  if (manifest.kind === 'gguf') {
    return { name: manifest.name, gguf: await read(manifest.files[0], false), source, note: null };
  }
  const has = (n) => manifest.files.includes(n);
  return {
    name: manifest.name,
    config: await read('config.json', true),
    weights: await read('model.safetensors', false),
    tokenizer: has('tokenizer.json') ? await read('tokenizer.json', true) : null,
    tokenizerConfig: has('tokenizer_config.json') ? await read('tokenizer_config.json', true) : null,
    source,
    note: null,
  };
}

// Saves a model opened from this computer into the page's cache (once it loaded), so the
// model list offers it after a reload; a full quota becomes a notice.
async function keepLocal(id, files) {
  const open = state.local[id];
  if (!open || open.cached) return;
  open.cached = true;
  const cache = await openCache();
  if (!cache) return;
  const keys = [...open.manifest.files, LOCAL_MANIFEST];
  try {
    for (const name of open.manifest.files) {
      await cache.put(localKey(id, name), new Response(open.files[name], {
        headers: { 'content-type': 'application/octet-stream' },
      }));
    }
    await cache.put(localKey(id, LOCAL_MANIFEST), new Response(JSON.stringify(open.manifest), {
      headers: { 'content-type': 'application/json' },
    }));
  } catch (e) {
    for (const name of keys) await cache.delete(localKey(id, name)).catch(() => {});
    open.note = `${open.manifest.name} was not saved in the page's cache: ` + (
      e?.name === 'QuotaExceededError'
        ? `the browser's storage quota for this site is full (${errorText(e)}). It runs now; ` +
          'open it again after a reload.'
        : errorText(e));
  }
  files.note = open.note ?? null;
}

// The local models in the page's cache (and those opened this visit) as entries of the
// model list, after the shipped ones.
async function listLocalModels() {
  const manifests = {};
  const cache = await openCache();
  if (cache) {
    for (const request of await cache.keys()) {
      if (!request.url.endsWith(`/${LOCAL_MANIFEST}`)) continue;
      try {
        const m = await (await cache.match(request)).json();
        manifests[m.id] = m;
      } catch (_) { /* a damaged entry: not listed */ }
    }
  }
  for (const [id, open] of Object.entries(state.local)) manifests[id] ??= open.manifest;
  const select = $('model');
  const current = state.modelUrl ?? select.value;
  for (const o of [...select.options]) if (o.value.startsWith('local:')) o.remove();
  for (const m of Object.values(manifests)) {
    const option = document.createElement('option');
    option.value = `local:${m.id}`;
    option.textContent = `${m.name} — ${mib(m.bytes)} (from this computer)`;
    select.append(option);
  }
  if ([...select.options].some((o) => o.value === current)) select.value = current;
}

// ---- generation -------------------------------------------------------------------------

function readNumber(id, fallback) {
  const v = Number($(id).value);
  return Number.isFinite(v) ? v : fallback;
}

function setupGenerate() {
  $('generate').addEventListener('click', generate);
  $('stop').addEventListener('click', () => state.engine.stop());
  $('stat-device').textContent = state.engine.on_gpu() ? 'WebGPU' : 'CPU (WebAssembly)';
}

async function generate() {
  const prompt = $('prompt').value;
  const options = {
    max_tokens: Math.max(1, Math.floor(readNumber('max-tokens', 200))),
    temperature: readNumber('temperature', 0.8),
    top_k: Math.max(0, Math.floor(readNumber('top-k', 40))),
    top_p: readNumber('top-p', 0.95),
    seed: Math.max(0, Math.floor(readNumber('seed', 0))),
  };
  $('failure').hidden = true;
  showNotice(state.engine.prompt_notice(prompt));
  $('output-prompt').textContent = prompt;
  $('output-text').textContent = '';
  for (const id of ['stat-prefill', 'stat-decode', 'stat-tokens']) $(id).textContent = '–';
  setBusy(true);
  $('stop').disabled = false;
  setState('generating');

  const start = performance.now();
  let first = 0;
  const out = $('output-text');
  const pre = $('output');
  // Tokens arrive in bursts (a decode chunk at a time). The page shows them once per
  // animation frame: one text node appended and one layout per frame, instead of
  // rebuilding the text and forcing a layout (scrollHeight) for every token, which took
  // a tenth of the decode rate in SwiftShader's WebGPU.
  let pending = '';
  let shown = 0;
  let frame = 0;
  const promptBytes = new TextEncoder().encode(prompt).length;
  const show = () => {
    frame = 0;
    if (pending) out.append(pending);
    pending = '';
    const now = performance.now();
    $('stat-tokens').textContent = String(shown);
    if (shown > 1) $('stat-decode').textContent = rate(shown - 1, (now - first) / 1000);
    pre.scrollTop = pre.scrollHeight;
  };
  try {
    const result = JSON.parse(await state.engine.generate(prompt, JSON.stringify(options),
      (text, index) => {
        if (index === 0) {
          first = performance.now();
          $('stat-prefill').textContent = rate(promptBytes, (first - start) / 1000);
        }
        pending += text;
        shown = index + 1;
        if (!frame) frame = requestAnimationFrame(show);
        if (index % 8 === 0) updateMemory();
      }));
    if (frame) cancelAnimationFrame(frame);
    // The engine's own timings replace the live estimates.
    const s = result.stats;
    $('stat-prefill').textContent = `${s.prefill_tokens_per_s.toFixed(1)} tok/s`;
    $('stat-decode').textContent = `${s.decode_tokens_per_s.toFixed(1)} tok/s`;
    $('stat-tokens').textContent = `${s.generated_tokens}${s.stopped ? ' (stopped)' : ''}`;
    out.textContent = result.text;
    updateMemory();
    window.walsh.last = result;
    setState('done');
  } catch (e) {
    await failed(e);
  } finally {
    endRun('stop');
  }
}

// A run failed. When the GPU can no longer be used (lost, out of memory), say so, open a
// new engine and reload the model, without a page reload.
async function failed(e) {
  const why = state.engine.gpu_failure();
  if (!why) {
    showFailure(errorText(e));
    return;
  }
  setState('recovering');
  setBusy(true);
  const message = `The run ended: the GPU failed (${why}).`;
  showMessage(`${message} Reopening WebGPU…`);
  await loadModel(state.modelUrl); // reopens the engine first
  if (state.loaded) {
    showMessage(`${message} walsh reopened ` +
      `${state.engine.on_gpu() ? 'WebGPU' : 'the engine on the CPU'} and reloaded the model: ` +
      'generate again.');
  }
}

// Replaces an engine whose GPU failed with a new one: WebGPU where it opens again, else
// the CPU.
async function reopenEngine() {
  state.engine.free();
  state.engine = null;
  const reason = await openEngine();
  if (reason) openCpu(`${reason} (after the GPU failed)`);
  $('stat-device').textContent = state.engine.on_gpu() ? 'WebGPU' : 'CPU (WebAssembly)';
}

// ---- benchmark --------------------------------------------------------------------------

function setupBench() {
  $('bench-run').addEventListener('click', runBench);
  $('bench-stop').addEventListener('click', () => state.engine.stop());
}

async function runBench() {
  const suites = ['kernels', 'decoder', 'paper'].filter((s) => $(`suite-${s}`).checked);
  if (suites.length === 0) {
    $('bench-label').textContent = 'choose at least one suite';
    return;
  }
  const bar = $('bench-progress');
  const label = $('bench-label');
  $('failure').hidden = true;
  $('bench-report').replaceChildren();
  $('bench-download').hidden = true;
  setBusy(true);
  $('bench-stop').disabled = false;
  setState('benchmarking');
  try {
    const json = await state.engine.bench(suites.join(','), $('bench-quick').checked,
      $('bench-weights').value, (what, done, total) => {
        bar.value = total ? done / total : 0;
        label.textContent = `${done}/${total} ${what}`;
      });
    window.walsh.lastReport = JSON.parse(json);
    showReport(json);
    setState('done');
  } catch (e) {
    await failed(e);
  } finally {
    endRun('bench-stop');
  }
}

function showReport(json) {
  const files = JSON.parse(state.wasm.Engine.report_files(json));
  const report = $('bench-report');
  for (const [name, text] of files) {
    if (name.endsWith('.md')) {
      report.append(markdownToHtml(text));
    } else if (name.endsWith('.svg')) {
      const figure = document.createElement('figure');
      figure.innerHTML = text; // our own SVG, made by walsh from numbers
      report.append(figure);
    } else if (name.endsWith('.json')) {
      const link = $('bench-download');
      link.href = URL.createObjectURL(new Blob([text], { type: 'application/json' }));
      link.download = name;
      link.hidden = false;
    }
  }
}

// The Markdown `walsh bench` writes: headings, paragraphs and pipe tables.
function markdownToHtml(md) {
  const root = document.createElement('div');
  const lines = md.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i];
    if (line.startsWith('#')) {
      const level = Math.min(line.match(/^#+/)[0].length + 1, 6);
      const h = document.createElement(`h${level}`);
      h.textContent = line.replace(/^#+\s*/, '');
      root.append(h);
    } else if (line.startsWith('|')) {
      const table = document.createElement('table');
      const cells = (l) => l.slice(1, -1).split('|').map((c) => c.trim());
      const head = cells(line);
      const align = (lines[i + 1] ?? '').startsWith('|') ? cells(lines[i + 1]) : [];
      const tr = table.createTHead().insertRow();
      for (const c of head) {
        const th = document.createElement('th');
        th.textContent = c;
        tr.append(th);
      }
      const body = table.createTBody();
      i += 2;
      for (; i < lines.length && lines[i].startsWith('|'); i++) {
        const row = body.insertRow();
        cells(lines[i]).forEach((c, j) => {
          const td = row.insertCell();
          td.textContent = c;
          if ((align[j] ?? '').endsWith(':')) td.className = 'num';
        });
      }
      i--;
      root.append(table);
    } else if (line.trim()) {
      const p = document.createElement('p');
      p.textContent = line;
      root.append(p);
    }
  }
  return root;
}

main().catch((e) => showFailure(errorText(e)));
