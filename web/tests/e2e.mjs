// End-to-end test of the built page (dist/) in headless Chromium with WebGPU (SwiftShader):
//   1. serve dist/ and a model folder (the tiny test models, laid out like checkpoints/ and
//      data/memory/, with a manifest written by `meacap-wgpu models manifest`) on 127.0.0.1;
//   2. load the models through the page, caption an image, compare with the native CLI's caption
//      for the same files, save a screenshot;
//   3. relaunch with the same browser profile while the server answers 404 for everything: the
//      page, the wasm and the models come from the browser's stores, and it captions again;
//   4. corrupt a stored model file: the page reports it, removes it and does not use it.
// Prints `test result: ok|FAILED. N passed; M failed` like cargo's harness.
//
// node web/tests/e2e.mjs --dist dist --cli path/to/meacap-wgpu --fixtures tests/fixtures --out DIR
import { createServer } from 'node:http';
import { execFileSync } from 'node:child_process';
import { cpSync, mkdirSync, mkdtempSync, readFileSync, statSync, existsSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, extname, resolve, normalize, sep } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const { chromium } = require('playwright-core');

const arg = (name, fallback) => {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const dist = resolve(arg('dist', 'dist'));
const cli = resolve(arg('cli', 'target/release/meacap-wgpu'));
const fixtures = resolve(arg('fixtures', 'tests/fixtures'));
const out = resolve(arg('out', mkdtempSync(join(tmpdir(), 'meacap-e2e-out-'))));
const timeout = Number(arg('timeout-s', '900')) * 1000;
// webgpu (default) or cpu: the backend the page is asked for (?backend=...).
const backend = arg('backend', 'webgpu');
mkdirSync(out, { recursive: true });

// ---- the model folder -------------------------------------------------------------------------
const models = mkdtempSync(join(tmpdir(), 'meacap-e2e-models-'));
const layout = {
  'checkpoints/clip-vit-base-patch32': 'clip',
  'checkpoints/gpt2': 'gpt2',
  'checkpoints/flan-t5-base-VG-factual-sg': 't5',
  'checkpoints/all-MiniLM-L6-v2': 'bert',
  'data/memory/tiny': 'memory/tiny',
};
for (const [to, from] of Object.entries(layout)) cpSync(join(fixtures, from), join(models, to), { recursive: true });
mkdirSync(join(models, 'checkpoints/train_coco'), { recursive: true });
cpSync(join(fixtures, 'viecap/coco_prefix-tiny.pt'), join(models, 'checkpoints/train_coco/coco_prefix-0014.pt'));
const modelArgs = ['--checkpoints', join(models, 'checkpoints'), '--memory-dir', join(models, 'data/memory'), '--memory-id', 'tiny'];
const env = { ...process.env, HF_HUB_OFFLINE: '1', HF_HOME: join(models, 'no-hf-cache') };
execFileSync(cli, ['models', 'manifest', '--root', models, ...modelArgs], { env, stdio: ['ignore', 'inherit', 'inherit'] });

const image = join(fixtures, 'pipeline/images/portrait.png');
const native = JSON.parse(execFileSync(cli, ['caption', '--offline', '--device', 'cpu', '--json', ...modelArgs, '--image-path', image], { env }).toString().trim().split('\n').pop());

// ---- the server -------------------------------------------------------------------------------
let mode = 'online';
const requests = [];
const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm', '.css': 'text/css', '.json': 'application/json' };
const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  requests.push(`${mode} ${path}`);
  if (mode === 'all-404') {
    res.writeHead(404, { 'content-type': 'text/html' });
    return res.end('<!doctype html><title>404</title>');
  }
  const rel = normalize(path === '/' ? '/index.html' : path).replace(/^[/\\]+/, '');
  for (const root of [dist, models]) {
    const file = join(root, rel);
    if (!file.startsWith(root + sep)) break;
    if (existsSync(file) && statSync(file).isFile()) {
      res.writeHead(200, { 'content-type': types[extname(file)] || 'application/octet-stream', 'content-length': statSync(file).size });
      return res.end(readFileSync(file));
    }
  }
  res.writeHead(404, { 'content-type': 'text/plain' });
  res.end('not found');
});
await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
const url = `http://127.0.0.1:${server.address().port}/?backend=${backend}`;

// ---- the browser ------------------------------------------------------------------------------
const profile = mkdtempSync(join(tmpdir(), 'meacap-e2e-profile-'));
const launch = () => chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  viewport: { width: 1100, height: 1000 },
  args: ['--no-sandbox', '--enable-unsafe-webgpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});

const results = [];
async function step(name, fn) {
  const t0 = Date.now();
  try {
    await fn();
    results.push([name, true]);
    console.log(`test ${name} ... ok (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    results.push([name, false]);
    console.log(`test ${name} ... FAILED (${((Date.now() - t0) / 1000).toFixed(1)} s)\n${e.stack || e}`);
  }
}

async function open(context) {
  const page = context.pages()[0] || await context.newPage();
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') console.log(`  [page ${m.type()}] ${m.text()}`); });
  page.on('pageerror', (e) => console.log(`  [page error] ${e.message}`));
  await page.goto(url);
  await page.waitForSelector('body[data-backend]', { timeout: 120000 });
  return page;
}

async function captionOnPage(page) {
  await page.setInputFiles('#image', image);
  await page.waitForSelector('#caption[data-done="true"]', { timeout });
  return (await page.textContent('#caption')).trim();
}

async function errorText(page) {
  return (await page.isVisible('#error')) ? (await page.textContent('#error')).trim() : '';
}

let context = await launch();
let page;
await step('first_visit_downloads_verifies_and_captions_like_the_cli', async () => {
  page = await open(context);
  const used = await page.getAttribute('body', 'data-backend');
  if (used !== backend) throw new Error(`expected the ${backend} backend, page says ${used}: ${await page.textContent('#notice')}`);
  await page.waitForSelector('#load:not([disabled])', { timeout: 60000 });
  const summary = await page.textContent('#models-summary');
  if (!/to download/.test(summary)) throw new Error(`sizes not shown before download: ${summary}`);
  await page.click('#load');
  await page.waitForFunction(() => document.body.dataset.ready === 'true' || !document.getElementById('error').hidden, null, { timeout });
  const error = await errorText(page);
  if (error) throw new Error(`loading failed: ${error}`);
  const caption = await captionOnPage(page);
  await page.screenshot({ path: join(out, 'first-visit.png'), fullPage: true });
  if (caption !== native.caption.trim()) throw new Error(`page caption ${JSON.stringify(caption)} != CLI caption ${JSON.stringify(native.caption)}`);
  const concepts = await page.$$eval('#concepts li', (li) => li.map((x) => x.textContent));
  if (JSON.stringify(concepts) !== JSON.stringify(native.concepts)) throw new Error(`concepts ${concepts} != ${native.concepts}`);
  await page.waitForSelector('body[data-offline-ready="true"]', { timeout: 60000 });
});
await context.close();

mode = 'all-404';
await step('second_visit_without_network_captions_from_the_store', async () => {
  context = await launch();
  page = await open(context);
  await page.waitForFunction(() => document.body.dataset.ready === 'true' || !document.getElementById('error').hidden, null, { timeout });
  const error = await errorText(page);
  if (error) throw new Error(`offline load failed: ${error}`);
  const caption = await captionOnPage(page);
  await page.screenshot({ path: join(out, 'offline-visit.png'), fullPage: true });
  if (caption !== native.caption.trim()) throw new Error(`offline caption ${JSON.stringify(caption)} != ${JSON.stringify(native.caption)}`);
  const served = requests.filter((r) => r.startsWith('all-404'));
  if (!served.length) throw new Error('the offline visit made no requests at all: the 404 server was not exercised');
});

await step('corrupt_stored_file_is_reported_and_not_used', async () => {
  const victim = 'checkpoints/flan-t5-base-VG-factual-sg/model.safetensors';
  await page.evaluate(async (path) => {
    let dir = await (await (await navigator.storage.getDirectory()).getDirectoryHandle('meacap')).getDirectoryHandle('files');
    const parts = path.split('/');
    for (const p of parts.slice(0, -1)) dir = await dir.getDirectoryHandle(p);
    const writable = await (await dir.getFileHandle(parts.at(-1))).createWritable({ keepExistingData: true });
    await writable.write({ type: 'write', position: 4096, data: new Uint8Array(64).fill(7) });
    await writable.close();
  }, victim);
  await page.reload();
  await page.waitForFunction(() => document.body.dataset.ready === 'true' || !document.getElementById('error').hidden, null, { timeout });
  const error = await errorText(page);
  await page.screenshot({ path: join(out, 'corrupt-store.png'), fullPage: true });
  if (!error.includes(victim) || !/corrupt/.test(error)) throw new Error(`expected a corruption report naming ${victim}, got: ${error || '(no error)'}`);
  if ((await page.getAttribute('body', 'data-ready')) === 'true') throw new Error('the page loaded the models despite the corrupt file');
  const stored = await page.evaluate(async (path) => {
    const index = JSON.parse(await (await (await (await navigator.storage.getDirectory()).getDirectoryHandle('meacap')).getFileHandle('index.json')).getFile().then((f) => f.text()));
    return path in index;
  }, victim);
  if (stored) throw new Error('the corrupt file is still listed in the store');
});
await context.close();
server.close();

writeFileSync(join(out, 'native-caption.json'), JSON.stringify(native, null, 2));
const passed = results.filter(([, ok]) => ok).length;
const failed = results.length - passed;
console.log(`\nscreenshots in ${out}`);
console.log(`test result: ${failed ? 'FAILED' : 'ok'}. ${passed} passed; ${failed} failed; 0 ignored; 0 measured; 0 filtered out`);
process.exit(failed ? 1 : 0);
