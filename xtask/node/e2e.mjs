// Drives the walsh page in Debian's headless Chromium (SwiftShader WebGPU) with
// playwright-core. Run by `cargo xtask test` (mode `test`) and `cargo xtask web-bench`
// (mode `bench`); both start `walsh serve` first and pass its URL.
//
//   node e2e.mjs test  URL ARTIFACTS_DIR   (env WALSH_PROMPT, WALSH_EXPECTED_TOKENS)
//   node e2e.mjs bench URL OUT_DIR SUITES [quick]
//
// The test mode prints `e2e: ok NAME` / `e2e: FAILED NAME: why` per check and ends with
// one `e2e-summary {json}` line that xtask reads.

import { chromium } from 'playwright-core';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { deepStrictEqual } from 'node:assert';

const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
// docs/measured.md (Browsers): headless Chromium runs WebGPU compute on SwiftShader with
// --enable-unsafe-webgpu; the rest keeps it offline and quiet.
const BASE_ARGS = [
  '--no-sandbox',
  '--disable-gpu',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--disable-quic',
];
const WEBGPU_ARGS = ['--enable-unsafe-webgpu'];
// SwiftShader is slow: generous limits for loading and generating.
const READY_TIMEOUT = 180_000;
const RUN_TIMEOUT = 600_000;

async function launch(webgpu) {
  return chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [...BASE_ARGS, ...(webgpu ? WEBGPU_ARGS : [])],
  });
}

async function openPage(browser, url, viewport = { width: 1100, height: 1000 }) {
  const page = await browser.newPage({ viewport });
  page.on('pageerror', (e) => console.log(`page error: ${e.message}`));
  await page.goto(url);
  return page;
}

async function waitForState(page, states, timeout) {
  await page.waitForFunction(
    (wanted) => wanted.includes(document.body.dataset.state),
    states,
    { timeout },
  );
  return page.evaluate(() => document.body.dataset.state);
}

async function pageFailure(page) {
  return page.evaluate(() => document.getElementById('failure-message').textContent);
}

async function testMode(url, artifacts) {
  const prompt = process.env.WALSH_PROMPT;
  const expected = JSON.parse(process.env.WALSH_EXPECTED_TOKENS ?? 'null');
  if (!prompt || !Array.isArray(expected)) {
    throw new Error('WALSH_PROMPT and WALSH_EXPECTED_TOKENS must be set');
  }
  mkdirSync(artifacts, { recursive: true });
  const results = [];
  const summary = {};
  const check = async (name, body) => {
    try {
      await body();
      results.push({ name, ok: true });
      console.log(`e2e: ok ${name}`);
    } catch (e) {
      results.push({ name, ok: false, why: e.message });
      console.log(`e2e: FAILED ${name}: ${e.message}`);
    }
  };

  const browser = await launch(true);
  try {
    const page = await openPage(browser, url);
    await check('page loads the default model on WebGPU', async () => {
      const st = await waitForState(page, ['ready', 'error', 'no-webgpu'], READY_TIMEOUT);
      if (st !== 'ready') {
        throw new Error(`page state ${st}: ${await pageFailure(page)}`);
      }
      summary.adapter = await page.evaluate(
        () => document.getElementById('adapter-name').textContent);
      summary.model = await page.evaluate(
        () => document.getElementById('download-label').textContent);
    });
    await check(`${expected.length} greedy tokens equal the native CPU reference`, async () => {
      await page.fill('#prompt', prompt);
      await page.fill('#max-tokens', String(expected.length));
      await page.fill('#temperature', '0');
      await page.fill('#top-k', '0');
      await page.fill('#top-p', '1');
      await page.fill('#seed', '0');
      await page.click('#generate');
      const st = await waitForState(page, ['done', 'error'], RUN_TIMEOUT);
      if (st !== 'done') throw new Error(`page state ${st}: ${await pageFailure(page)}`);
      const last = await page.evaluate(() => window.walsh.last);
      deepStrictEqual(last.tokens, expected);
      summary.text = last.text;
      summary.decode_tokens_per_s = last.stats.decode_tokens_per_s;
      summary.prefill_tokens_per_s = last.stats.prefill_tokens_per_s;
      summary.peak_gpu_bytes = last.stats.memory?.peak_bytes;
      const shot = join(artifacts, 'page.png');
      await page.screenshot({ path: shot, fullPage: true });
      summary.screenshot = shot;
    });
    await check('the page fits a phone-width screen', async () => {
      await page.setViewportSize({ width: 390, height: 844 });
      const overflow = await page.evaluate(
        () => document.documentElement.scrollWidth - window.innerWidth);
      const shot = join(artifacts, 'page-phone.png');
      await page.screenshot({ path: shot, fullPage: true });
      summary.phone_screenshot = shot;
      if (overflow > 1) throw new Error(`the page is ${overflow}px wider than a 390px screen`);
    });
    await check('the benchmark tab produces a valid report', async () => {
      await page.setViewportSize({ width: 1100, height: 1000 });
      await page.click('#tab-bench');
      await page.uncheck('#suite-decoder');
      await page.uncheck('#suite-paper');
      await page.check('#suite-kernels');
      await page.check('#bench-quick');
      await page.click('#bench-run');
      const st = await waitForState(page, ['done', 'error'], RUN_TIMEOUT);
      if (st !== 'done') throw new Error(`page state ${st}: ${await pageFailure(page)}`);
      const report = await page.evaluate(() => window.walsh.lastReport);
      if (report.schema_version !== 1) throw new Error(`schema ${report.schema_version}`);
      if (report.kernels.length === 0) throw new Error('no kernel measured');
      for (const k of report.kernels) {
        for (const f of ['gb_per_s', 'gflop_per_s', 'fraction_of_copy']) {
          if (!(Number.isFinite(k[f]) && k[f] > 0)) {
            throw new Error(`${k.kernel} n=${k.n}: ${f} = ${k[f]}`);
          }
        }
      }
      const tables = await page.locator('#bench-report table').count();
      if (tables === 0) throw new Error('the report table is not shown');
      summary.bench_kernels = report.kernels.length;
    });
  } finally {
    await browser.close();
  }

  const plain = await launch(false);
  try {
    const page = await openPage(plain, url);
    await check('without WebGPU the page says what is missing', async () => {
      const st = await waitForState(page, ['ready', 'error', 'no-webgpu'], READY_TIMEOUT);
      if (st !== 'no-webgpu') throw new Error(`page state ${st}, not no-webgpu`);
      const visible = await page.isVisible('#nogpu');
      const text = await page.textContent('#nogpu');
      if (!visible || !text.includes('WebGPU')) throw new Error('the message is not shown');
      await page.screenshot({ path: join(artifacts, 'page-no-webgpu.png') });
    });
  } finally {
    await plain.close();
  }

  const failed = results.filter((r) => !r.ok).length;
  summary.passed = results.length - failed;
  summary.failed = failed;
  console.log(`e2e-summary ${JSON.stringify(summary)}`);
  return failed === 0;
}

async function benchMode(url, out, suites, quick) {
  mkdirSync(out, { recursive: true });
  const browser = await launch(true);
  try {
    const page = await openPage(browser, url);
    const st = await waitForState(page, ['ready', 'error', 'no-webgpu'], READY_TIMEOUT);
    if (st !== 'ready') throw new Error(`page state ${st}: ${await pageFailure(page)}`);
    await page.click('#tab-bench');
    for (const s of ['kernels', 'decoder', 'paper']) {
      await page.setChecked(`#suite-${s}`, suites.includes(s));
    }
    await page.setChecked('#bench-quick', quick);
    await page.click('#bench-run');
    let last = '';
    const progress = setInterval(async () => {
      const text = await page.textContent('#bench-label').catch(() => '');
      if (text && text !== last) console.log(`bench: ${text}`);
      last = text;
    }, 5000);
    let state;
    try {
      state = await waitForState(page, ['done', 'error'], 0);
    } finally {
      clearInterval(progress);
    }
    if (state !== 'done') throw new Error(`page state ${state}: ${await pageFailure(page)}`);
    const files = await page.evaluate(
      () => window.walsh.reportFiles(JSON.stringify(window.walsh.lastReport)));
    for (const [name, text] of files) {
      writeFileSync(join(out, name), text);
      console.log(`wrote ${join(out, name)}`);
    }
    await page.screenshot({ path: join(out, 'browser-bench-page.png'), fullPage: true });
  } finally {
    await browser.close();
  }
  return true;
}

const [mode, url, dir, suites, quick] = process.argv.slice(2);
let ok;
if (mode === 'test') {
  ok = await testMode(url, dir);
} else if (mode === 'bench') {
  ok = await benchMode(url, dir, (suites ?? 'kernels,decoder').split(','), quick === 'quick');
} else {
  console.error('usage: node e2e.mjs test URL ARTIFACTS | bench URL OUT SUITES [quick]');
  ok = false;
}
process.exit(ok ? 0 : 1);
