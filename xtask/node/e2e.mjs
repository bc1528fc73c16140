// Drives the walsh page in Debian's headless Chromium (SwiftShader WebGPU, with
// playwright-core) and Firefox ESR (its WebGPU is wgpu over the machine's Vulkan driver,
// lavapipe here; with puppeteer-core over WebDriver BiDi, since playwright-core only
// drives its own patched Firefox). Run by `cargo xtask test` (mode `test`) and
// `cargo xtask web-bench` (modes `bench` and `ratio`); each starts `walsh serve` first
// and passes its URL.
//
//   node e2e.mjs test  URL ARTIFACTS_DIR [BROWSERS]   (env WALSH_PROMPT,
//                      WALSH_EXPECTED_TOKENS, WALSH_LONG_PROMPT, WALSH_LONG_EXPECTED,
//                      WALSH_Q4_MODEL, WALSH_Q4_EXPECTED, WALSH_LOCAL: the models the
//                      page opens from disk, see local_models in xtask/src/e2e.rs)
//   node e2e.mjs bench URL OUT_DIR SUITES [quick]
//   node e2e.mjs ratio LABEL=URL[,LABEL=URL...] PROMPT TOKENS RUNS [BROWSERS]
//
// The test mode prints `e2e: ok NAME` / `e2e: FAILED NAME: why` / `e2e: skipped NAME: why`
// per check and ends with one `e2e-summary {json}` line that xtask reads; the ratio mode
// prints one `e2e-ratio {json}` line per browser.

import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deepStrictEqual } from 'node:assert';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const FIREFOX = process.env.FIREFOX ??
  ['/usr/lib/firefox-esr/firefox-esr', '/usr/bin/firefox-esr', '/usr/bin/firefox']
    .find((p) => existsSync(p)) ?? '/usr/lib/firefox-esr/firefox-esr';
// docs/measured.md (Browsers): headless Chromium runs WebGPU compute on SwiftShader with
// --enable-unsafe-webgpu; the rest keeps it offline and quiet.
const CHROMIUM_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];
// More switches from CHROMIUM_FLAGS (space-separated), for experiments such as
// `--enable-dawn-features=disable_workgroup_init` (bench-results/page-workgroup-fill-dec4.md).
const EXTRA_CHROMIUM_ARGS = (process.env.CHROMIUM_FLAGS ?? '').split(' ').filter((a) => a);
// Firefox exposes WebGPU on Linux only with the first; the second lets it use a
// blocklisted (here: software) adapter.
const FIREFOX_WEBGPU = { 'dom.webgpu.enabled': true, 'gfx.webgpu.ignore-blocklist': true };
const CI = process.env.CI === 'true';
// Software adapters are slow: generous limits for loading and generating.
const READY_TIMEOUT = 300_000;
const RUN_TIMEOUT = 600_000;
const VIEWPORT = { width: 1100, height: 1000 };

// One page in either driver, with the few operations the checks need.
class Tab {
  constructor(kind, page, context) {
    this.kind = kind;
    this.page = page;
    this.context = context;
    this.modelRequests = 0;
    // Every request the page makes (opening a model from disk must make none).
    this.requests = [];
    page.on('request', (r) => {
      this.requests.push(r.url());
      if (r.url().includes('/model.safetensors')) this.modelRequests++;
    });
    page.on('pageerror', (e) => console.log(`page error: ${e.message ?? e}`));
  }

  // Brings the tab to the front: a browser throttles the timers of a hidden tab, which
  // the page's generation waits on (several builds' tabs in `ratio` mode).
  front() {
    return this.page.bringToFront();
  }

  goto(url) {
    return this.page.goto(url);
  }

  reload() {
    return this.page.reload();
  }

  eval(fn, arg) {
    return this.page.evaluate(fn, arg);
  }

  async waitFor(fn, arg, timeout) {
    if (this.kind === 'playwright') {
      await this.page.waitForFunction(fn, arg, { timeout });
    } else {
      await this.page.waitForFunction(fn, { timeout, polling: 250 }, arg);
    }
  }

  // Waits until the page is in one of `states` and returns it.
  async state(states, timeout) {
    await this.waitFor((wanted) => wanted.includes(document.body.dataset.state), states, timeout);
    return this.eval(() => document.body.dataset.state);
  }

  click(selector) {
    return this.page.click(selector);
  }

  // Sets the value of the element at `selector` and fires `event` on it, as a visitor does.
  setValue(selector, value, event) {
    return this.eval(([s, v, e]) => {
      const el = document.querySelector(s);
      el.value = v;
      el.dispatchEvent(new Event(e, { bubbles: true }));
    }, [selector, value, event]);
  }

  value(selector, value) {
    return this.setValue(selector, value, 'input');
  }

  // Chooses `value` in a <select>, as a visitor does (its change event).
  select(selector, value) {
    return this.setValue(selector, value, 'change');
  }

  checked(selector, on) {
    return this.eval(([s, v]) => { document.querySelector(s).checked = v; }, [selector, on]);
  }

  text(selector) {
    return this.eval((s) => document.querySelector(s)?.textContent ?? '', selector);
  }

  visible(selector) {
    return this.eval((s) => {
      const el = document.querySelector(s);
      return !!el && !el.hidden && el.getClientRects().length > 0;
    }, selector);
  }

  viewport(width, height) {
    return this.kind === 'playwright'
      ? this.page.setViewportSize({ width, height })
      : this.page.setViewport({ width, height });
  }

  screenshot(path) {
    return this.page.screenshot({ path, fullPage: true });
  }

  failure() {
    return this.text('#failure-message');
  }

  // Chooses `paths` in the file input at `selector`, as a visitor does in the file dialog
  // (a folder's path for a `webkitdirectory` input; Chromium). Playwright sets them
  // through the DevTools protocol, puppeteer through WebDriver BiDi's input.setFiles.
  async setFiles(selector, paths) {
    if (this.kind === 'playwright') {
      await this.page.setInputFiles(selector, paths);
    } else {
      const input = await this.page.$(selector);
      await input.uploadFile(...paths);
    }
  }
}

// {name, version, tab, newTab, close} of a started browser, or throws.
async function launch(browser, webgpu) {
  if (browser === 'chromium') {
    if (!existsSync(CHROMIUM)) throw new Missing(`${CHROMIUM} is missing (apt-get install chromium)`);
    const b = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: [...CHROMIUM_ARGS, ...EXTRA_CHROMIUM_ARGS, ...(webgpu ? ['--enable-unsafe-webgpu'] : [])],
    });
    const context = await b.newContext({ viewport: VIEWPORT });
    const page = await context.newPage();
    return {
      name: 'Chromium',
      version: b.version(),
      tab: new Tab('playwright', page, context),
      newTab: async () => new Tab('playwright', await context.newPage(), context),
      close: () => b.close(),
    };
  }
  if (!existsSync(FIREFOX)) throw new Missing(`${FIREFOX} is missing (apt-get install firefox-esr)`);
  const b = await puppeteer.launch({
    browser: 'firefox',
    executablePath: FIREFOX,
    headless: true,
    protocol: 'webDriverBiDi',
    extraPrefsFirefox: webgpu ? FIREFOX_WEBGPU : {},
    defaultViewport: VIEWPORT,
  });
  const page = await b.newPage();
  return {
    name: 'Firefox',
    version: (await b.version()).replace(/^firefox\//i, ''),
    tab: new Tab('puppeteer', page, null),
    newTab: async () => new Tab('puppeteer', await b.newPage(), null),
    close: () => b.close(),
  };
}

class Missing extends Error {}

// ---- the checks -------------------------------------------------------------------------

function checker(results) {
  return async (name, body) => {
    try {
      await body();
      results.push({ name, ok: true });
      console.log(`e2e: ok ${name}`);
    } catch (e) {
      results.push({ name, ok: false, why: e.message });
      console.log(`e2e: FAILED ${name}: ${e.message}`);
    }
  };
}

async function generateIn(tab, prompt, tokens) {
  await tab.value('#prompt', prompt);
  await tab.value('#max-tokens', String(tokens));
  await tab.value('#temperature', '0');
  await tab.value('#top-k', '0');
  await tab.value('#top-p', '1');
  await tab.value('#seed', '0');
  await tab.click('#generate');
  const st = await tab.state(['done', 'error'], RUN_TIMEOUT);
  if (st !== 'done') throw new Error(`page state ${st}: ${await tab.failure()}`);
  return tab.eval(() => window.walsh.last);
}

async function loaded(tab, device) {
  const st = await tab.state(['ready', 'error'], READY_TIMEOUT);
  if (st !== 'ready') throw new Error(`page state ${st}: ${await tab.failure()}`);
  const on = await tab.eval(() => document.body.dataset.device);
  if (on !== device) throw new Error(`the engine runs on ${on}, not ${device}`);
}

// The checks every browser with WebGPU gets.
async function webgpuChecks(check, b, url, env, shots, summary) {
  const { tab } = b;
  const prefix = b.name === 'Chromium' ? '' : `${b.name.toLowerCase()}-`;
  const label = `${b.name} ${b.version}`;
  await tab.goto(url);
  await check(`${label}: the page loads the default model on WebGPU`, async () => {
    await loaded(tab, 'webgpu');
    summary.adapter = await tab.text('#adapter-name');
    // Firefox leaves GPUAdapter.info empty: the page names the browser instead.
    if (!summary.adapter || summary.adapter.startsWith('WebGPU adapter')) {
      throw new Error(`no sensible adapter label: ${JSON.stringify(summary.adapter)}`);
    }
    summary.model = await tab.text('#download-label');
    if (tab.modelRequests !== 1) throw new Error(`${tab.modelRequests} model downloads, not 1`);
    // The first load on a fresh profile times the decode GEMVs and names one for f16.
    const gemv = await tab.eval(() => [window.walsh.gemv, window.walsh.gemvMeasured]);
    if (!/^gemv/.test(gemv[0]?.f16 ?? '') || gemv[1] !== true) {
      throw new Error(`no measured GEMV choice: ${JSON.stringify(gemv)}`);
    }
    summary.gemv = gemv[0];
  });
  await check(`${label}: ${env.expected.length} greedy tokens equal the native CPU reference`, async () => {
    const last = await generateIn(tab, env.prompt, env.expected.length);
    deepStrictEqual(last.tokens, env.expected);
    summary.text = last.text;
    summary.decode_tokens_per_s = last.stats.decode_tokens_per_s;
    summary.prefill_tokens_per_s = last.stats.prefill_tokens_per_s;
    summary.peak_gpu_bytes = last.stats.memory?.peak_bytes;
    summary.screenshot = join(shots, `${prefix}page.png`);
    await tab.screenshot(summary.screenshot);
  });
  await check(`${label}: the page fits a phone-width screen`, async () => {
    await tab.viewport(390, 844);
    const overflow = await tab.eval(
      () => document.documentElement.scrollWidth - window.innerWidth);
    summary.phone_screenshot = join(shots, `${prefix}page-phone.png`);
    await tab.screenshot(summary.phone_screenshot);
    await tab.viewport(VIEWPORT.width, VIEWPORT.height);
    if (overflow > 1) throw new Error(`the page is ${overflow}px wider than a 390px screen`);
  });
  await check(`${label}: the benchmark tab produces a valid report`, async () => {
    await tab.click('#tab-bench');
    await tab.checked('#suite-decoder', false);
    await tab.checked('#suite-paper', false);
    await tab.checked('#suite-kernels', true);
    await tab.checked('#bench-quick', true);
    // The weight format reaches the report's options (the kernels ignore it: cheap), and
    // `?max_kernel_n=`'s bound the suite (the quick suite's widths are 256 and 1024).
    await tab.select('#bench-weights', 'q4');
    await tab.eval(() => window.walsh.setMaxKernelN(256));
    await tab.click('#bench-run');
    const st = await tab.state(['done', 'error'], RUN_TIMEOUT);
    if (st !== 'done') throw new Error(`page state ${st}: ${await tab.failure()}`);
    const report = await tab.eval(() => window.walsh.lastReport);
    if (report.schema_version !== 1) throw new Error(`schema ${report.schema_version}`);
    if (report.options.weights !== 'q4') {
      throw new Error(`weights ${JSON.stringify(report.options.weights)} in the report, not q4`);
    }
    if (report.kernels.length === 0) throw new Error('no kernel measured');
    await tab.eval(() => window.walsh.setMaxKernelN(undefined));
    const wide = report.kernels.filter((k) => k.n > 256).map((k) => `${k.kernel} n=${k.n}`);
    if (report.options.max_kernel_n !== 256 || wide.length > 0) {
      throw new Error(`max_kernel_n ${report.options.max_kernel_n}, measured ${wide.join(', ')}`);
    }
    for (const k of report.kernels) {
      for (const f of ['gb_per_s', 'gflop_per_s', 'fraction_of_copy']) {
        if (!(Number.isFinite(k[f]) && k[f] > 0)) {
          throw new Error(`${k.kernel} n=${k.n}: ${f} = ${k[f]}`);
        }
      }
    }
    const tables = await tab.eval(() => document.querySelectorAll('#bench-report table').length);
    if (tables === 0) throw new Error('the report table is not shown');
    summary.bench_kernels = report.kernels.length;
    await tab.click('#tab-generate');
  });
  await check(`${label}: a second visit loads the model from the page's cache`, async () => {
    const before = tab.modelRequests;
    await tab.reload();
    await loaded(tab, 'webgpu');
    const load = await tab.eval(() => window.walsh.lastLoad);
    if (tab.modelRequests !== before) {
      throw new Error(`${tab.modelRequests - before} model request(s) on the second visit`);
    }
    if (load?.source !== 'cache') throw new Error(`the model came from ${load?.source}`);
    // ... and the GEMV choice from localStorage, not measured again.
    const gemv = await tab.eval(() => [window.walsh.gemv, window.walsh.gemvMeasured]);
    if (gemv[1] !== false || JSON.stringify(gemv[0]) !== JSON.stringify(summary.gemv)) {
      throw new Error(`the second visit's GEMV choice: ${JSON.stringify(gemv)}`);
    }
  });
  await q4Check(check, b, label, env, summary);
  await localChecks(check, b, url, env, summary);
}

// The q4 model, chosen in the model list (which shows each model's download size): its
// greedy tokens equal the native CPU decoder's on the same model. Then back to the
// default model (from the page's cache), where the later checks expect it.
async function q4Check(check, b, label, env, summary) {
  const { tab } = b;
  const previous = await tab.eval(() => document.getElementById('model').value);
  await check(`${label}: the q4 model, chosen in the list, gives the native CPU reference's ` +
    `${env.q4.expected.length} greedy tokens`, async () => {
    const [options, models] = await tab.eval(async () => [
      [...document.querySelectorAll('#model option')].map((o) => [o.value, o.textContent]),
      await (await fetch('models.json')).json(),
    ]);
    for (const m of models) {
      const want = `${m.name} — ${(m.bytes / (1 << 20)).toFixed(1)} MiB`;
      const got = options.find(([value]) => value === m.url)?.[1];
      if (got !== want) throw new Error(`the list shows ${JSON.stringify(got)}, not ${want}`);
    }
    const before = tab.modelRequests;
    // The change handler sets the state to `loading` before it returns.
    await tab.select('#model', env.q4.url);
    await loaded(tab, 'webgpu');
    if (tab.modelRequests !== before + 1) {
      throw new Error(`${tab.modelRequests - before} model download(s), not 1`);
    }
    const last = await generateIn(tab, env.prompt, env.q4.expected.length);
    deepStrictEqual(last.tokens, env.q4.expected);
    summary.q4_decode_tokens_per_s = last.stats.decode_tokens_per_s;
    summary.q4_model = await tab.text('#download-label');
    summary.q4_option = options.find(([value]) => value === env.q4.url)?.[1];
  });
  // Whatever happened above, the default model again for the checks that follow.
  await tab.select('#model', previous).catch(() => {});
  await loaded(tab, 'webgpu').catch(() => {});
}

// Opens `paths` through the file input at `selector` and waits for the model to load (or
// fail): the state is marked first, as the input's change event may come after the call.
async function openFiles(tab, selector, paths) {
  await tab.eval(() => { document.body.dataset.state = 'choosing'; });
  await tab.setFiles(selector, paths);
  return tab.state(['ready', 'error'], READY_TIMEOUT);
}

// Greedy tokens of a model opened from disk (`want`: prompt, tokens, text and, for the
// GGUF file, llama.cpp's prompt_ids) against the reference, in ids and text.
async function compareLocal(tab, want) {
  const last = await generateIn(tab, want.prompt, want.tokens.length);
  deepStrictEqual(last.tokens, want.tokens);
  if (want.prompt_ids) deepStrictEqual(last.prompt_tokens, want.prompt_ids);
  if (last.text !== want.text) {
    throw new Error(`text ${JSON.stringify(last.text)}, natively ${JSON.stringify(want.text)}`);
  }
  return last;
}

// The value of the model list's entry for the model opened from disk as `name`.
async function cachedOption(tab, name) {
  const value = await tab.eval((n) => [...document.querySelectorAll('#model option')]
    .find((o) => o.value.startsWith('local:') && o.textContent.includes(n))?.value, name);
  if (!value) throw new Error(`the model list does not offer ${name}`);
  return value;
}

// Models opened from this computer (the "Open a model" control): the llama-bpe GGUF file
// in both browsers (llama.cpp's tokens), the model folder (the native CPU decoder's
// tokens) through the folder input in Chromium and the multi-file input in Firefox, the
// GGUF file from the page's cache after a reload (Firefox: llama.cpp's tokens again;
// Chromium: refused against a smaller binding limit), and a truncated file refused with a
// message. Then the default model again, for the checks that follow.
async function localChecks(check, b, url, env, summary) {
  const { tab } = b;
  const started = Date.now();
  const label = `${b.name} ${b.version}`;
  const { gguf, folder, broken } = env.local;
  const previous = await tab.eval(() => document.getElementById('model').value);
  await check(`${label}: a GGUF file opened from this computer (Llama 3 vocabulary, GQA) ` +
    `gives llama.cpp's prompt ids and ${gguf.tokens.length} greedy tokens, and the native text`,
  async () => {
    const before = tab.requests.length;
    const st = await openFiles(tab, '#local-files', [gguf.path]);
    if (st !== 'ready') throw new Error(`page state ${st}: ${await tab.failure()}`);
    const info = await tab.eval(() => window.walsh.model);
    const want = { format: 'gguf', heads: 8, kv_heads: 2, hidden_size: 32,
      vocab_size: 128256, tokenizer: 'BPE' };
    for (const [k, v] of Object.entries(want)) {
      if (info[k] !== v) throw new Error(`${k} is ${JSON.stringify(info[k])}, not ${v}: ${JSON.stringify(info)}`);
    }
    const load = await tab.eval(() => window.walsh.lastLoad);
    if (load?.source !== 'disk') throw new Error(`the model came from ${load?.source}`);
    const last = await compareLocal(tab, gguf);
    // Read in the tab, never sent: no request at all while opening and generating.
    const made = tab.requests.slice(before);
    if (made.length > 0) throw new Error(`the page made requests: ${made.join(', ')}`);
    summary.local_gguf = await tab.text('#download-label');
    summary.local_gguf_decode_tokens_per_s = last.stats.decode_tokens_per_s;
    const option = await tab.eval(() => [...document.querySelectorAll('#model option')]
      .find((o) => o.selected)?.textContent ?? '');
    if (!option.includes(gguf.name) || !option.includes('from this computer')) {
      throw new Error(`the model list shows ${JSON.stringify(option)}`);
    }
  });
  const chromium = b.name === 'Chromium';
  await check(`${label}: a model folder (config.json, model.safetensors, tokenizer.json) ` +
    `opened through the ${chromium ? 'folder' : 'multi-file'} input gives the native CPU ` +
    `decoder's ${folder.tokens.length} greedy tokens and text`, async () => {
    const st = chromium
      ? await openFiles(tab, '#local-folder', [folder.path])
      : await openFiles(tab, '#local-files', folder.files);
    if (st !== 'ready') throw new Error(`page state ${st}: ${await tab.failure()}`);
    const info = await tab.eval(() => window.walsh.model);
    if (info.format !== 'safetensors' || info.tokenizer !== 'BPE' || info.kv_heads !== 2) {
      throw new Error(`model ${JSON.stringify(info)}`);
    }
    await compareLocal(tab, folder);
  });
  if (chromium) {
    // A page that plans with a 1 MiB binding limit still loads the default model (its
    // largest matrix, a layer's gate + up, is 688 KiB), and the rest of the Chromium checks
    // run on it. The GGUF model's 2.3 MB embedding (and tied head) is split by rows across
    // bindings under it (the device keeps the browser's limit; walsh plans with 1 MiB).
    await check(`${label}: after a reload the model list offers the GGUF file from the ` +
      'page\'s cache, and under a 1 MiB binding limit its embedding is split across ' +
      'bindings and gives llama.cpp\'s tokens', async () => {
      await tab.goto(`${url}?max_binding=1048576`);
      await loaded(tab, 'webgpu');
      // The adapter panel shows the limit walsh plans with, not the browser's.
      const chips = await tab.eval(() => document.getElementById('adapter-features').textContent);
      if (!chips.includes('storage binding 1.0 MiB')) throw new Error(`adapter panel: ${chips}`);
      const value = await cachedOption(tab, gguf.name);
      await tab.select('#model', value);
      const st = await tab.state(['ready', 'error'], READY_TIMEOUT);
      if (st !== 'ready') throw new Error(`page state ${st}: ${await tab.failure()}`);
      const load = await tab.eval(() => window.walsh.lastLoad);
      if (load?.source !== 'cache') throw new Error(`the model came from ${load?.source}`);
      await compareLocal(tab, gguf);
    });
  } else {
    await check(`${label}: after a reload the GGUF file reopens from the page's cache and ` +
      'gives llama.cpp\'s tokens again', async () => {
      const before = tab.modelRequests;
      await tab.reload();
      await loaded(tab, 'webgpu');
      const value = await cachedOption(tab, gguf.name);
      await tab.select('#model', value);
      const st = await tab.state(['ready', 'error'], READY_TIMEOUT);
      if (st !== 'ready') throw new Error(`page state ${st}: ${await tab.failure()}`);
      const load = await tab.eval(() => window.walsh.lastLoad);
      if (load?.source !== 'cache') throw new Error(`the model came from ${load?.source}`);
      if (tab.modelRequests !== before) throw new Error('the page made a model request');
      await compareLocal(tab, gguf);
    });
  }
  await check(`${label}: a truncated GGUF file is refused with a message naming it`, async () => {
    const st = await openFiles(tab, '#local-files', [broken]);
    const message = await tab.failure();
    if (st !== 'error') throw new Error(`page state ${st}`);
    for (const part of ['truncated.gguf', 'truncated GGUF']) {
      if (!message.includes(part)) throw new Error(`the message does not name ${part}: ${message}`);
    }
    // The model loaded before stays usable.
    if (await tab.eval(() => document.getElementById('generate').disabled)) {
      throw new Error('Generate is off after the refused file');
    }
  });
  await tab.select('#model', previous).catch(() => {});
  await loaded(tab, 'webgpu').catch(() => {});
  summary.local_seconds = Math.round((Date.now() - started) / 1000);
}

// Chromium-only checks of the WebGPU page (one engine for all of them: each is cheap there
// or needs a Chromium feature).
async function chromiumChecks(check, b, url, env) {
  const { tab } = b;
  await check('Chromium: a lost device ends the run with a message and the page recovers', async () => {
    const requests = tab.modelRequests;
    await tab.value('#prompt', env.prompt);
    await tab.value('#max-tokens', '400');
    await tab.click('#generate');
    await tab.waitFor(() => Number(document.getElementById('stat-tokens').textContent) >= 2,
      null, RUN_TIMEOUT);
    await tab.eval(() => window.walsh.loseDevice());
    await tab.waitFor(() => document.getElementById('failure-message').textContent
      .includes('reopened'), null, READY_TIMEOUT);
    await loaded(tab, 'webgpu');
    const message = await tab.failure();
    if (!message.includes('the GPU failed')) throw new Error(`message: ${message}`);
    if (tab.modelRequests !== requests) throw new Error('the model was downloaded again');
    const again = await generateIn(tab, env.prompt, 8);
    deepStrictEqual(again.tokens, env.expected.slice(0, 8));
  });
  await check('Chromium: offline, the page and the model load from their caches', async () => {
    await b.tab.context.setOffline(true);
    try {
      const probe = await tab.eval(() => fetch(`models.json?probe=${Date.now()}`)
        .then(() => 'online', () => 'offline'));
      if (probe !== 'offline') throw new Error('the network is still reachable');
      await tab.reload();
      await loaded(tab, 'webgpu');
    } finally {
      await b.tab.context.setOffline(false);
    }
  });
  await check('Chromium: "Clear cached models" empties the cache; the next load downloads', async () => {
    await tab.click('#cache-clear');
    await tab.waitFor(() => document.getElementById('cache-status').textContent
      .startsWith('No model'), null, 30_000);
    const cached = await tab.eval(() => window.walsh.cachedModels());
    if (cached.length !== 0) throw new Error(`still cached: ${JSON.stringify(cached)}`);
    const before = tab.modelRequests;
    await tab.reload();
    await loaded(tab, 'webgpu');
    if (tab.modelRequests !== before + 1) throw new Error('the model was not downloaded');
    const status = await tab.text('#cache-status');
    if (!status.startsWith('1 model(s) saved')) throw new Error(`cache status: ${status}`);
  });
  await check('Chromium: a model beyond the adapter\'s limits is refused before upload', async () => {
    // The default model's matrices split by rows across bindings (two rows must fit);
    // its largest buffer that cannot split is each layer's KV cache, 128 positions x 256
    // f16 values = 64 KiB: a 32 KiB binding limit (the page's preview of a smaller
    // device) must refuse it, naming both.
    await tab.goto(`${url}?max_binding=32768`);
    const st = await tab.state(['ready', 'error'], READY_TIMEOUT);
    const message = await tab.failure();
    if (st !== 'error') throw new Error(`page state ${st}`);
    for (const part of ['key and value cache', 'maxStorageBufferBindingSize', '32768']) {
      if (!message.includes(part)) throw new Error(`the message does not name ${part}: ${message}`);
    }
    const memory = await tab.eval(() => JSON.parse(window.walsh.memory()));
    if (memory.current_bytes !== 0) throw new Error(`${memory.current_bytes} bytes uploaded`);
    const chips = await tab.eval(() => document.getElementById('adapter-features').textContent);
    if (!chips.includes('storage binding 32 KiB')) throw new Error(`adapter panel: ${chips}`);
  });
}

// The checks of a browser without WebGPU: the page runs on the CPU.
async function cpuChecks(check, b, url, env, shots, summary) {
  const { tab } = b;
  const prefix = b.name === 'Chromium' ? '' : `${b.name.toLowerCase()}-`;
  const label = `${b.name} ${b.version} without WebGPU`;
  await tab.goto(url);
  await check(`${label}: the page says so and runs on the CPU`, async () => {
    await loaded(tab, 'cpu');
    const text = await tab.text('#nogpu');
    if (!(await tab.visible('#nogpu')) || !text.includes('WebGPU') || !text.includes('CPU')) {
      throw new Error(`the message is not shown: ${text}`);
    }
  });
  await check(`${label}: ${env.expected.length} greedy tokens on the WASM CPU decoder equal the native CPU reference`, async () => {
    const last = await generateIn(tab, env.prompt, env.expected.length);
    deepStrictEqual(last.tokens, env.expected);
    const device = await tab.text('#stat-device');
    const speed = await tab.text('#stat-decode');
    if (!device.includes('CPU') || !/\d tok\/s/.test(speed)) {
      throw new Error(`device ${device}, decode ${speed}`);
    }
    summary.cpu_decode_tokens_per_s = last.stats.decode_tokens_per_s;
    await tab.screenshot(join(shots, `${prefix}page-no-webgpu.png`));
  });
}

async function longPromptCheck(check, b, env) {
  await check(`${b.name}: a prompt longer than the context keeps its last bytes, with a notice`, async () => {
    const last = await generateIn(b.tab, env.longPrompt, env.longExpected.length);
    deepStrictEqual(last.tokens, env.longExpected);
    const notice = await b.tab.text('#notice');
    if (!(await b.tab.visible('#notice')) || !notice.includes('more than the model\'s context')) {
      throw new Error(`notice: ${notice}`);
    }
  });
}

// Chromium's DevTools protocol can shrink the site's storage quota: the model then cannot
// be cached, which the page must say while still running it.
async function quotaCheck(check, url) {
  await check('Chromium: a full storage quota becomes a message, and the model still runs', async () => {
    const b = await launch('chromium', false);
    try {
      const cdp = await b.tab.context.newCDPSession(b.tab.page);
      await cdp.send('Storage.overrideQuotaForOrigin', {
        origin: new URL(url).origin,
        quotaSize: 64 * 1024,
      });
      await b.tab.goto(url);
      await loaded(b.tab, 'cpu');
      const notice = await b.tab.text('#notice');
      if (!notice.includes('quota')) throw new Error(`notice: ${notice}`);
      const cached = await b.tab.eval(() => window.walsh.cachedModels());
      if (cached.length !== 0) throw new Error('a partial model stayed in the cache');
    } finally {
      await b.close();
    }
  });
}

async function testMode(url, artifacts, browsers) {
  const env = {
    prompt: process.env.WALSH_PROMPT,
    expected: JSON.parse(process.env.WALSH_EXPECTED_TOKENS ?? 'null'),
    longPrompt: process.env.WALSH_LONG_PROMPT,
    longExpected: JSON.parse(process.env.WALSH_LONG_EXPECTED ?? 'null'),
    q4: {
      url: process.env.WALSH_Q4_MODEL,
      expected: JSON.parse(process.env.WALSH_Q4_EXPECTED ?? 'null'),
    },
    local: JSON.parse(process.env.WALSH_LOCAL ?? 'null'),
  };
  if (!env.prompt || !Array.isArray(env.expected) || !env.longPrompt ||
      !Array.isArray(env.longExpected) || !env.q4.url || !Array.isArray(env.q4.expected) ||
      !env.local?.gguf || !env.local?.folder || !env.local?.broken) {
    throw new Error('WALSH_PROMPT, WALSH_EXPECTED_TOKENS, WALSH_LONG_PROMPT, ' +
      'WALSH_LONG_EXPECTED, WALSH_Q4_MODEL, WALSH_Q4_EXPECTED and WALSH_LOCAL must be set');
  }
  mkdirSync(artifacts, { recursive: true });
  const results = [];
  const check = checker(results);
  const summary = {};
  for (const browser of browsers) {
    const s = (summary[browser] = {});
    const started = Date.now();
    for (const webgpu of [true, false]) {
      let b;
      try {
        b = await launch(browser, webgpu);
      } catch (e) {
        const name = `${browser}${webgpu ? '' : ' without WebGPU'}: the browser starts`;
        if (e instanceof Missing && !CI) {
          console.log(`e2e: skipped ${name}: ${e.message}`);
        } else {
          results.push({ name, ok: false, why: e.message });
          console.log(`e2e: FAILED ${name}: ${e.message}`);
        }
        continue;
      }
      s.version = b.version;
      try {
        if (webgpu) {
          await webgpuChecks(check, b, url, env, artifacts, s);
          if (browser === 'chromium') await chromiumChecks(check, b, url, env);
        } else {
          await cpuChecks(check, b, url, env, artifacts, s);
          if (browser === 'chromium') await longPromptCheck(check, b, env);
        }
      } finally {
        await b.close();
      }
    }
    if (browser === 'chromium') await quotaCheck(check, url);
    s.seconds = Math.round((Date.now() - started) / 1000);
  }
  const failed = results.filter((r) => !r.ok).length;
  summary.passed = results.length - failed;
  summary.failed = failed;
  console.log(`e2e-summary ${JSON.stringify(summary)}`);
  return failed === 0;
}

// ---- benchmarks -------------------------------------------------------------------------

async function benchMode(url, out, suites, quick) {
  mkdirSync(out, { recursive: true });
  const b = await launch('chromium', true);
  const { tab } = b;
  try {
    await tab.goto(url);
    await loaded(tab, 'webgpu');
    await tab.click('#tab-bench');
    for (const s of ['kernels', 'decoder', 'paper']) {
      await tab.checked(`#suite-${s}`, suites.includes(s));
    }
    await tab.checked('#bench-quick', quick);
    await tab.click('#bench-run');
    let last = '';
    const progress = setInterval(async () => {
      const text = await tab.text('#bench-label').catch(() => '');
      if (text && text !== last) console.log(`bench: ${text}`);
      last = text;
    }, 5000);
    let st;
    try {
      st = await tab.state(['done', 'error'], 0);
    } finally {
      clearInterval(progress);
    }
    if (st !== 'done') throw new Error(`page state ${st}: ${await tab.failure()}`);
    const files = await tab.eval(
      () => window.walsh.reportFiles(JSON.stringify(window.walsh.lastReport)));
    for (const [name, text] of files) {
      writeFileSync(join(out, name), text);
      console.log(`wrote ${join(out, name)}`);
    }
    await tab.screenshot(join(out, 'browser-bench-page.png'));
  } finally {
    await b.close();
  }
  return true;
}

function median(values) {
  const v = [...values].sort((a, b) => a - b);
  return v.length % 2 ? v[(v.length - 1) / 2] : (v[v.length / 2 - 1] + v[v.length / 2]) / 2;
}

// The page's greedy decode rate on each browser's WebGPU: a warm-up run (it compiles the
// pipelines), then the median of `runs`. Each run goes through the page's Generate button
// (streaming into the page, as a visitor sees it); one more set goes straight to the
// engine with a no-op callback, which shows what the page's own work costs. `targets` is
// `label=URL,...`: several builds of the page (e.g. this one and a baseline), each in its
// own tab, their runs alternating so a slow spell of the machine hits them alike.
async function ratioMode(targets, prompt, tokens, runs, browsers) {
  const builds = targets.split(',').map((t) => {
    const at = t.indexOf('=');
    return { label: t.slice(0, at), url: t.slice(at + 1) };
  });
  for (const browser of browsers) {
    const b = await launch(browser, true);
    try {
      const tabs = [];
      for (const build of builds) {
        const tab = tabs.length === 0 ? b.tab : await b.newTab();
        await tab.goto(build.url);
        // Older pages do not say which device they run on; they only have WebGPU.
        const st = await tab.state(['ready', 'error'], READY_TIMEOUT);
        if (st !== 'ready') throw new Error(`${build.label}: page state ${st}: ${await tab.failure()}`);
        const device = await tab.eval(() => document.body.dataset.device);
        if (device && device !== 'webgpu') throw new Error(`${build.label} runs on ${device}`);
        const engineOnly = await tab.eval(() => typeof window.walsh.engineOnly === 'function');
        tabs.push({ ...build, tab, engineOnly, page: [], engine: [] });
      }
      for (let i = 0; i <= runs; i++) {
        for (const t of tabs) {
          await t.tab.front();
          const last = await generateIn(t.tab, prompt, tokens);
          if (i > 0) t.page.push(last.stats);
        }
      }
      for (let i = 0; i <= runs; i++) {
        for (const t of tabs.filter((x) => x.engineOnly)) {
          await t.tab.front();
          const stats = await t.tab.eval(([p, n]) => window.walsh.engineOnly(p, n), [prompt, tokens]);
          if (i > 0) t.engine.push(stats);
        }
      }
      const pick = (list) => {
        if (list.length === 0) return null;
        const m = median(list.map((s) => s.decode_tokens_per_s));
        const s = list.find((x) => x.decode_tokens_per_s === m) ?? list[0];
        return {
          decode_tokens_per_s: m,
          runs: list.map((x) => x.decode_tokens_per_s),
          dispatches_per_token: s.dispatches_per_token ?? null,
          readbacks_per_token: s.readbacks_per_token ?? null,
          decode_chunks: s.decode_chunks ?? null,
          generated_tokens: s.generated_tokens,
        };
      };
      for (const t of tabs) {
        const result = {
          build: t.label,
          browser: b.name,
          browser_version: b.version,
          adapter: await t.tab.text('#adapter-name'),
          user_agent: await t.tab.eval(() => navigator.userAgent),
          page: pick(t.page),
          engine_only: pick(t.engine),
        };
        console.log(`e2e-ratio ${JSON.stringify(result)}`);
      }
    } finally {
      await b.close();
    }
  }
  return true;
}

const [mode, url, ...rest] = process.argv.slice(2);
const browserList = (s) => (s ?? 'chromium,firefox').split(',').filter((x) => x);
let ok;
if (mode === 'test') {
  ok = await testMode(url, rest[0], browserList(rest[1]));
} else if (mode === 'bench') {
  ok = await benchMode(url, rest[0], (rest[1] ?? 'kernels,decoder').split(','), rest[2] === 'quick');
} else if (mode === 'ratio') {
  ok = await ratioMode(url, rest[0], Number(rest[1]), Number(rest[2]), browserList(rest[3]));
} else {
  console.error('usage: node e2e.mjs test URL ARTIFACTS [BROWSERS] | bench URL OUT SUITES [quick] | ' +
    'ratio LABEL=URL[,LABEL=URL...] PROMPT TOKENS RUNS [BROWSERS]');
  ok = false;
}
process.exit(ok ? 0 : 1);
