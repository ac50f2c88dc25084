// The captioning worker: owns the wasm module (the `meacap` library), the model store (OPFS) and
// every network request for model files. The page talks to it with {id, op, ...} messages and
// gets {id, result} / {id, error} replies plus {type: 'progress' | 'log'} events.
//
// Store layout (origin private file system):
//   meacap/files/<manifest path>   model files, written only after their size and sha256 matched
//   meacap/index.json              {path: {size, sha256}} of the verified files
//   meacap/manifest.json           the last manifest used (lets the page start with no network)
import init, { Session, Hasher, IncomingFile, runtimeErrors } from './meacap-web.js';

const CHUNK = 8 << 20; // bytes per copy into wasm memory / per OPFS read
const ROLE_ORDER = ['clip', 'gpt2', 'viecap', 'parser', 'sbert', 'memory'];
const MANIFEST_FORMAT = 'meacap-wgpu-manifest-v1';

let session = null;
let wasmReady = null;

const post = (msg) => self.postMessage(msg);
const progress = (p) => post({ type: 'progress', ...p });
const log = (text) => post({ type: 'log', text });

class UserError extends Error {}

// ---- storage ---------------------------------------------------------------------------------

async function storeRoot() {
  const root = await navigator.storage.getDirectory();
  return root.getDirectoryHandle('meacap', { create: true });
}

async function dirFor(path, create) {
  let dir = await (await storeRoot()).getDirectoryHandle('files', { create: true });
  const parts = path.split('/');
  for (const part of parts.slice(0, -1)) dir = await dir.getDirectoryHandle(part, { create });
  return [dir, parts[parts.length - 1]];
}

async function readJson(name) {
  try {
    const file = await (await (await storeRoot()).getFileHandle(name)).getFile();
    return JSON.parse(await file.text());
  } catch {
    return null;
  }
}

async function writeJson(name, value) {
  const handle = await (await storeRoot()).getFileHandle(name, { create: true });
  const access = await handle.createSyncAccessHandle();
  try {
    const bytes = new TextEncoder().encode(JSON.stringify(value));
    access.truncate(0);
    access.write(bytes, { at: 0 });
    access.flush();
  } finally {
    access.close();
  }
}

async function storedIndex() {
  return (await readJson('index.json')) || {};
}

async function forget(path) {
  const index = await storedIndex();
  delete index[path];
  await writeJson('index.json', index);
  try {
    const [dir, name] = await dirFor(path, false);
    await dir.removeEntry(name);
  } catch { /* already gone */ }
}

async function isStored(entry, index) {
  const known = index[entry.path];
  if (!known || known.size !== entry.size || known.sha256 !== entry.sha256) return false;
  try {
    const [dir, name] = await dirFor(entry.path, false);
    const file = await (await dir.getFileHandle(name)).getFile();
    return file.size === entry.size;
  } catch {
    return false;
  }
}

// Streams `chunks` (an async iterable of Uint8Array) into the store under entry.path, hashing on
// the way; the index only learns of the file once size and sha256 match the manifest.
async function storeStream(entry, chunks, onBytes) {
  const [dir, name] = await dirFor(entry.path, true);
  const handle = await dir.getFileHandle(name, { create: true });
  const access = await handle.createSyncAccessHandle();
  const hasher = new Hasher();
  let at = 0;
  try {
    access.truncate(0);
    for await (const chunk of chunks) {
      if (at + chunk.length > entry.size) {
        throw new UserError(`${entry.path}: more bytes than the ${entry.size} the manifest announces (wrong file or wrong manifest)`);
      }
      hasher.update(chunk);
      access.write(chunk, { at });
      at += chunk.length;
      onBytes(at);
    }
    access.flush();
  } finally {
    access.close();
  }
  const digest = hasher.finish();
  if (at !== entry.size || digest !== entry.sha256) {
    await dir.removeEntry(name).catch(() => {});
    throw new UserError(at !== entry.size
      ? `${entry.path}: got ${at} bytes, the manifest says ${entry.size}`
      : `${entry.path}: sha256 ${digest} does not match the manifest (${entry.sha256})`);
  }
  const index = await storedIndex();
  index[entry.path] = { size: entry.size, sha256: entry.sha256 };
  await writeJson('index.json', index);
}

async function* responseChunks(response) {
  const reader = response.body.getReader();
  for (;;) {
    const { done, value } = await reader.read();
    if (done) return;
    yield value;
  }
}

async function* fileChunks(file) {
  for (let at = 0; at < file.size; at += CHUNK) {
    yield new Uint8Array(await file.slice(at, at + CHUNK).arrayBuffer());
  }
}

// ---- the manifest -----------------------------------------------------------------------------

function checkManifest(manifest, where) {
  if (!manifest || manifest.format !== MANIFEST_FORMAT || typeof manifest.models !== 'object') {
    throw new UserError(`${where} is not a meacap-wgpu manifest (expected "format": "${MANIFEST_FORMAT}"); write one with \`meacap-wgpu models manifest\``);
  }
  for (const role of ROLE_ORDER) {
    const model = manifest.models[role];
    if (!model || !Array.isArray(model.files) || model.files.length === 0) {
      throw new UserError(`${where} lists no files for the ${role} model`);
    }
    for (const f of model.files) {
      if (typeof f.path !== 'string' || typeof f.name !== 'string' || !Number.isSafeInteger(f.size) || !/^[0-9a-f]{64}$/.test(f.sha256) || f.path.split('/').includes('..')) {
        throw new UserError(`${where}: malformed entry for ${role}: ${JSON.stringify(f)}`);
      }
    }
  }
  return manifest;
}

function looksLikeHtml(response, firstBytes) {
  const type = response.headers.get('content-type') || '';
  if (type.includes('text/html')) return true;
  const head = new TextDecoder().decode(firstBytes.slice(0, 64)).trimStart().toLowerCase();
  return head.startsWith('<!doctype') || head.startsWith('<html');
}

// Where the manifest and the files come from: the page's origin, or a folder the user picked.
function originSource(base) {
  const baseUrl = new URL(base, self.location.href);
  return {
    label: baseUrl.href,
    async manifest() {
      const url = new URL('meacap-manifest.json', baseUrl);
      let response;
      try {
        response = await fetch(url, { cache: 'no-store' });
      } catch (e) {
        return { missing: `cannot reach ${url} (${e.message})` };
      }
      if (!response.ok) return { missing: `${url} answered HTTP ${response.status}` };
      const bytes = new Uint8Array(await response.arrayBuffer());
      if (looksLikeHtml(response, bytes)) return { missing: `${url} returned an HTML page, not the manifest` };
      let json;
      try {
        json = JSON.parse(new TextDecoder().decode(bytes));
      } catch (e) {
        throw new UserError(`${url} is not valid JSON (${e.message})`);
      }
      return { manifest: checkManifest(json, url.href) };
    },
    async chunks(entry) {
      const url = new URL(entry.path, baseUrl);
      let response;
      try {
        response = await fetch(url, { cache: 'no-store' });
      } catch (e) {
        throw new UserError(`cannot download ${url}: ${e.message}`);
      }
      if (!response.ok) throw new UserError(`cannot download ${url}: HTTP ${response.status}`);
      const length = response.headers.get('content-length');
      if (length !== null && response.headers.get('content-encoding') === null && Number(length) !== entry.size) {
        throw new UserError(`${url}: the server sends ${length} bytes, the manifest says ${entry.size} (stale manifest or wrong file)`);
      }
      const reader = responseChunks(response);
      // Peek at the first chunk: a dev server answering a missing file with index.html and 200
      // must never end up in the store as a model file.
      const first = await reader.next();
      if (!first.done && looksLikeHtml(response, first.value) && !entry.path.endsWith('.html')) {
        throw new UserError(`${url} returned an HTML page instead of ${entry.name}: the file is missing on the server`);
      }
      return (async function* () {
        if (!first.done) yield first.value;
        yield* reader;
      })();
    },
  };
}

function folderSource(files) {
  // The shallowest meacap-manifest.json is the root; paths in it are relative to its folder.
  const byPath = new Map();
  for (const file of files) byPath.set(file.webkitRelativePath || file.name, file);
  const manifests = [...byPath.keys()].filter((p) => p.split('/').pop() === 'meacap-manifest.json')
    .sort((a, b) => a.split('/').length - b.split('/').length);
  const rootPrefix = manifests.length ? manifests[0].slice(0, -'meacap-manifest.json'.length) : null;
  return {
    label: 'the chosen folder',
    async manifest() {
      if (rootPrefix === null) {
        throw new UserError('the chosen folder has no meacap-manifest.json: run `meacap-wgpu models manifest` in it first');
      }
      const text = await byPath.get(rootPrefix + 'meacap-manifest.json').text();
      let json;
      try {
        json = JSON.parse(text);
      } catch (e) {
        throw new UserError(`meacap-manifest.json in the chosen folder is not valid JSON (${e.message})`);
      }
      return { manifest: checkManifest(json, 'meacap-manifest.json in the chosen folder') };
    },
    async chunks(entry) {
      const file = byPath.get(rootPrefix + entry.path);
      if (!file) throw new UserError(`the chosen folder has no ${entry.path} (listed in its manifest)`);
      if (file.size !== entry.size) throw new UserError(`${entry.path} in the chosen folder has ${file.size} bytes, the manifest says ${entry.size}`);
      return fileChunks(file);
    },
  };
}

async function resolveManifest(source) {
  const found = await source.manifest();
  if (found.manifest) {
    await writeJson('manifest.json', found.manifest);
    return { manifest: found.manifest, from: source.label };
  }
  const cached = await readJson('manifest.json');
  if (cached) {
    log(`${found.missing}: using the manifest stored on an earlier visit`);
    return { manifest: checkManifest(cached, 'the stored manifest'), from: 'the browser store' };
  }
  throw new UserError(`${found.missing}, and nothing is stored from an earlier visit. Serve the page next to meacap-manifest.json (see the README) or pick your model folder.`);
}

async function inventory(manifest) {
  const index = await storedIndex();
  const models = [];
  for (const role of ROLE_ORDER) {
    const files = [];
    for (const entry of manifest.models[role].files) files.push({ ...entry, stored: await isStored(entry, index) });
    models.push({ role, source: manifest.models[role].source || '', files });
  }
  return models;
}

// ---- operations --------------------------------------------------------------------------------

async function openSession(backend) {
  await (wasmReady ||= init());
  const want = backend || 'auto';
  let notice = '';
  if (want !== 'cpu') {
    const adapter = self.navigator.gpu ? await self.navigator.gpu.requestAdapter().catch(() => null) : null;
    if (adapter) {
      try {
        session = await Session.open('webgpu');
      } catch (e) {
        notice = `WebGPU failed to start (${e.message}): running on the CPU instead, expect minutes per image with full-size models`;
      }
    } else {
      notice = self.navigator.gpu
        ? 'your browser exposes no WebGPU adapter: running on the CPU instead, expect minutes per image with full-size models'
        : 'this browser has no WebGPU: running on the CPU instead, expect minutes per image with full-size models';
    }
    if (!session && want === 'webgpu') throw new UserError(notice);
  }
  session ||= await Session.open('cpu');
  return { device: session.device, webgpu: session.isWebgpu, software: session.isSoftwareAdapter, notice };
}

async function pickSource(spec) {
  if (spec.kind === 'folder') return folderSource(spec.files);
  return originSource(spec.base || './');
}

async function inspect(spec) {
  const source = await pickSource(spec);
  const { manifest, from } = await resolveManifest(source);
  return { from, models: await inventory(manifest) };
}

async function load(spec) {
  if (!session) throw new UserError('the worker has no device yet');
  const source = await pickSource(spec);
  const { manifest } = await resolveManifest(source);
  const started = performance.now();
  const timings = {};
  // 1. Bring every missing file into the store (verified before it is kept).
  for (const role of ROLE_ORDER) {
    const index = await storedIndex();
    for (const entry of manifest.models[role].files) {
      if (await isStored(entry, index)) continue;
      progress({ role, file: entry.path, phase: 'download', done: 0, total: entry.size });
      const chunks = await source.chunks(entry);
      await storeStream(entry, chunks, (done) => progress({ role, file: entry.path, phase: 'download', done, total: entry.size }));
    }
  }
  timings.store_ms = performance.now() - started;
  // 2. Load model by model from the store: verify while copying into wasm memory, build the
  //    network (uploading each tensor), free the bytes.
  const t0 = performance.now();
  const index = await storedIndex();
  for (const role of ROLE_ORDER) {
    const model = manifest.models[role];
    for (const entry of model.files) {
      const [dir, name] = await dirFor(entry.path, false).catch(() => [null, null]);
      const handle = dir && await dir.getFileHandle(name).catch(() => null);
      if (!handle || !index[entry.path]) throw new UserError(`${entry.path} is not in the browser store: load with the network on (or pick the folder) once`);
      const access = await handle.createSyncAccessHandle();
      const incoming = new IncomingFile(entry.name, entry.size);
      try {
        const buffer = new Uint8Array(Math.min(CHUNK, Math.max(entry.size, 1)));
        let at = 0;
        while (at < entry.size) {
          const n = access.read(buffer, { at });
          if (n === 0) break;
          incoming.push(buffer.subarray(0, n));
          at += n;
          progress({ role, file: entry.path, phase: 'verify', done: at, total: entry.size });
        }
      } finally {
        access.close();
      }
      try {
        session.addFile(incoming, entry.sha256);
      } catch (e) {
        await forget(entry.path);
        throw new UserError(`the stored copy of ${entry.path} is corrupt (${e.message}); it was removed from the store and not used. Load again with the network on to download it afresh.`);
      }
    }
    progress({ role, file: '', phase: 'upload', done: 0, total: 1 });
    const r0 = performance.now();
    const checkpoint = role === 'viecap' ? model.files[0].name : undefined;
    session.load(role, `${role} (${model.source || model.files[0].path.split('/').slice(0, -1).join('/')})`, checkpoint);
    timings[`load_${role}_ms`] = performance.now() - r0;
    progress({ role, file: '', phase: 'upload', done: 1, total: 1 });
  }
  session.finish();
  timings.load_ms = performance.now() - t0;
  // 3. One warm-up pass compiles the GPU kernels now rather than on the user's first image.
  const w0 = performance.now();
  await session.caption(warmupImage(), 'warm-up.bmp');
  timings.warmup_ms = performance.now() - w0;
  return { timings, models: await inventory(manifest) };
}

// A 32x32 grey BMP: enough to run every stage once.
function warmupImage() {
  const w = 32, h = 32, row = w * 3, size = 54 + row * h;
  const b = new Uint8Array(size);
  const dv = new DataView(b.buffer);
  b[0] = 0x42; b[1] = 0x4d; dv.setUint32(2, size, true); dv.setUint32(10, 54, true);
  dv.setUint32(14, 40, true); dv.setInt32(18, w, true); dv.setInt32(22, h, true);
  dv.setUint16(26, 1, true); dv.setUint16(28, 24, true); dv.setUint32(34, row * h, true);
  b.fill(128, 54);
  return b;
}

async function clear() {
  const root = await navigator.storage.getDirectory();
  await root.removeEntry('meacap', { recursive: true }).catch(() => {});
  return { cleared: true };
}

const ops = {
  init: (m) => openSession(m.backend),
  inspect: (m) => inspect(m.source || {}),
  load: (m) => load(m.source || {}),
  options: (m) => session.setOptions(m.order, m.beam, m.memory),
  caption: async (m) => {
    const result = JSON.parse(await session.caption(new Uint8Array(m.image), m.name));
    // A GPU kernel the browser refused is reported only through the runtime's log: say so.
    const errors = runtimeErrors();
    if (errors.length) result.runtime_errors = errors;
    return result;
  },
  clear: () => clear(),
  estimate: async () => navigator.storage.estimate(),
};

self.onmessage = async (event) => {
  const { id, op } = event.data;
  try {
    if (!ops[op]) throw new UserError(`unknown operation ${op}`);
    post({ id, result: await ops[op](event.data) });
  } catch (e) {
    post({ id, error: e instanceof Error ? e.message : String(e) });
  }
};
