// The walsh page: checks for WebGPU, loads the engine (web/pkg, built by `cargo xtask web`),
// downloads a model, streams generated text and runs the benchmark suites.
//
// `document.body.dataset.state` says where the page is (loading, ready, generating,
// benchmarking, done, no-webgpu, error) and `window.walsh.last` holds the last generation:
// the end-to-end test (xtask/node/e2e.mjs) waits on and reads these.

const $ = (id) => document.getElementById(id);

const state = {
  engine: null,
  models: [],
  busy: false,
};
window.walsh = {
  last: null,
  lastReport: null,
  // [file name, contents] of a report, as `walsh bench --out` writes them.
  reportFiles: (json) => JSON.parse(state.Engine.report_files(json)),
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

function showNoWebGPU(reason) {
  $('nogpu-reason').textContent = reason;
  $('nogpu').hidden = false;
  setState('no-webgpu');
}

function showFailure(message) {
  $('failure-message').textContent = message;
  $('failure').hidden = false;
  setState('error');
}

function errorText(e) {
  return e && e.message ? e.message : String(e);
}

// ---- start-up ---------------------------------------------------------------------------

async function main() {
  if (!('gpu' in navigator) || !navigator.gpu) {
    showNoWebGPU('This browser does not expose WebGPU (navigator.gpu is missing).');
    return;
  }
  let adapter = null;
  try {
    adapter = await navigator.gpu.requestAdapter({ powerPreference: 'high-performance' });
  } catch (e) {
    adapter = null;
  }
  if (!adapter) {
    showNoWebGPU('WebGPU is present but offered no adapter: the GPU may be blocklisted or ' +
      'hardware acceleration may be off.');
    return;
  }

  let wasm;
  try {
    wasm = await import('./pkg/walsh.js');
    await wasm.default();
  } catch (e) {
    showFailure('Could not load the WebAssembly engine from pkg/walsh.js: build it with ' +
      `\`cargo xtask web\` and serve with \`walsh serve\`. (${errorText(e)})`);
    return;
  }
  $('version').textContent = `walsh ${wasm.Engine.version()}`;
  try {
    const info = adapter.info ?? {};
    const label = [info.vendor, info.architecture, info.description]
      .filter((s) => s).join(' ');
    state.engine = await wasm.Engine.open(label || null);
  } catch (e) {
    showNoWebGPU(errorText(e));
    return;
  }
  state.Engine = wasm.Engine;
  showAdapter(JSON.parse(state.engine.adapter()));
  setupTabs();
  setupGenerate();
  setupBench();

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
    option.textContent = m.name;
    select.append(option);
  }
  const wanted = new URLSearchParams(location.search).get('model');
  if (wanted) select.value = state.models.find((m) => m.name === wanted)?.url ?? select.value;
  select.addEventListener('change', () => loadModel(select.value));
  await loadModel(select.value);
}

function showAdapter(a) {
  $('adapter-name').textContent = `${a.name || 'WebGPU adapter'} (${a.backend}, ${a.device_type})` +
    (a.driver ? ` · ${a.driver}` : '');
  const chips = [
    ['shader-f16', a.shader_f16],
    ['subgroups', a.subgroup],
    ['timestamp-query', a.timestamp_query],
    [`workgroup storage ${a.max_workgroup_storage_bytes / 1024} KiB`, true],
    [`storage binding ${mib(a.max_storage_buffer_binding_bytes)}`, true],
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
  $('bench-run').disabled = busy;
  $('model').disabled = busy;
}

// ---- models -----------------------------------------------------------------------------

async function loadModel(url) {
  const model = state.models.find((m) => m.url === url);
  $('model-about').textContent = model?.about ?? '';
  state.loaded = false;
  setBusy(true);
  setState('loading');
  const bar = $('download');
  const label = $('download-label');
  bar.value = 0;
  label.textContent = 'downloading…';
  try {
    const info = JSON.parse(await state.engine.load_model(url, (received, total) => {
      if (total) {
        bar.value = received / total;
        label.textContent = `${mib(received)} of ${mib(total)}`;
      } else {
        bar.removeAttribute('value');
        label.textContent = mib(received);
      }
    }));
    bar.value = 1;
    label.textContent = `${info.variant}: ${info.params.toLocaleString()} parameters ` +
      `(attention ${info.attention_params.toLocaleString()}), d=${info.hidden_size}, ` +
      `${info.layers} layers, context ${info.context}, ${mib(info.download_bytes)} downloaded`;
    state.loaded = true;
    updateMemory();
    setState('ready');
  } catch (e) {
    label.textContent = '';
    showFailure(`Loading ${url}: ${errorText(e)}`);
  } finally {
    setBusy(false);
  }
}

function updateMemory() {
  const m = JSON.parse(state.engine.memory());
  $('stat-memory').textContent = `${mib(m.current_bytes)} (peak ${mib(m.peak_bytes)})`;
}

// ---- generation -------------------------------------------------------------------------

function readNumber(id, fallback) {
  const v = Number($(id).value);
  return Number.isFinite(v) ? v : fallback;
}

function setupGenerate() {
  $('generate').addEventListener('click', generate);
  $('stop').addEventListener('click', () => state.engine.stop());
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
  $('output-prompt').textContent = prompt;
  $('output-text').textContent = '';
  for (const id of ['stat-prefill', 'stat-decode', 'stat-tokens']) $(id).textContent = '–';
  setBusy(true);
  $('stop').disabled = false;
  setState('generating');

  const start = performance.now();
  let first = 0;
  let count = 0;
  const out = $('output-text');
  const pre = $('output');
  try {
    const result = JSON.parse(await state.engine.generate(prompt, JSON.stringify(options),
      (text, index) => {
        const now = performance.now();
        count = index + 1;
        if (index === 0) {
          first = now;
          $('stat-prefill').textContent = rate(new TextEncoder().encode(prompt).length,
            (now - start) / 1000);
        } else {
          $('stat-decode').textContent = rate(index, (now - first) / 1000);
        }
        $('stat-tokens').textContent = String(count);
        out.textContent += text;
        pre.scrollTop = pre.scrollHeight;
        if (index % 8 === 0) updateMemory();
      }));
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
    showFailure(errorText(e));
  } finally {
    $('stop').disabled = true;
    setBusy(false);
  }
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
      (what, done, total) => {
        bar.value = total ? done / total : 0;
        label.textContent = `${done}/${total} ${what}`;
      });
    window.walsh.lastReport = JSON.parse(json);
    showReport(json);
    setState('done');
  } catch (e) {
    showFailure(errorText(e));
  } finally {
    $('bench-stop').disabled = true;
    setBusy(false);
  }
}

function showReport(json) {
  const files = JSON.parse(state.Engine.report_files(json));
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
