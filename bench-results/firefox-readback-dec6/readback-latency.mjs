// How long a browser's WebGPU takes to hand back a mapped buffer: 20 times, a 256-byte
// copy submitted and mapped (`mapAsync`), then 10 empty submissions and
// `onSubmittedWorkDone`. Copy into xtask/node (its node_modules) and run there:
//   node readback-latency.mjs firefox|chromium URL
// URL: any page of the same origin rules, e.g. `walsh serve`'s http://127.0.0.1:PORT/.
import { chromium } from 'playwright-core';
import puppeteer from 'puppeteer-core';

const [browser, url] = process.argv.slice(2);
let b, page;
if (browser === 'firefox') {
  b = await puppeteer.launch({
    browser: 'firefox', executablePath: '/usr/lib/firefox-esr/firefox-esr', headless: true,
    protocol: 'webDriverBiDi',
    extraPrefsFirefox: { 'dom.webgpu.enabled': true, 'gfx.webgpu.ignore-blocklist': true },
  });
  page = await b.newPage();
} else {
  b = await chromium.launch({
    executablePath: '/usr/bin/chromium', headless: true,
    args: ['--no-sandbox', '--disable-gpu', '--enable-unsafe-webgpu'],
  });
  page = await (await b.newContext()).newPage();
}
await page.goto(url);
const r = await page.evaluate(async () => {
  const a = await navigator.gpu.requestAdapter();
  const d = await a.requestDevice();
  const src = d.createBuffer({ size: 256, usage: GPUBufferUsage.COPY_SRC | GPUBufferUsage.COPY_DST });
  const map = [];
  for (let i = 0; i < 20; i++) {
    const dst = d.createBuffer({ size: 256, usage: GPUBufferUsage.COPY_DST | GPUBufferUsage.MAP_READ });
    const e = d.createCommandEncoder();
    e.copyBufferToBuffer(src, 0, dst, 0, 256);
    const t0 = performance.now();
    d.queue.submit([e.finish()]);
    await dst.mapAsync(GPUMapMode.READ);
    map.push(+(performance.now() - t0).toFixed(2));
    dst.unmap();
  }
  const done = [];
  for (let i = 0; i < 10; i++) {
    const t0 = performance.now();
    d.queue.submit([]);
    await d.queue.onSubmittedWorkDone();
    done.push(+(performance.now() - t0).toFixed(2));
  }
  return { map_ms: map, work_done_ms: done };
});
console.log(JSON.stringify(r));
await b.close();
