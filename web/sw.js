// Service worker: keeps the page itself (HTML, JS, CSS, wasm) so it opens with no network.
// Model files are not its business (the worker stores them in OPFS after checking them).
// Network first, so a new build is picked up when online; the stored copy when the network
// fails or the server no longer has the file.
const CACHE = 'meacap-app-v1';
const SHELL = ['./', './index.html', './app.js', './worker.js', './style.css', './meacap-web.js', './meacap-web_bg.wasm'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((cache) => cache.addAll(SHELL)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil((async () => {
    for (const key of await caches.keys()) if (key !== CACHE) await caches.delete(key);
    await self.clients.claim();
  })());
});

function isShell(url) {
  if (url.origin !== self.location.origin) return false;
  const scope = new URL(self.registration.scope);
  if (!url.pathname.startsWith(scope.pathname)) return false;
  const rest = url.pathname.slice(scope.pathname.length);
  return rest === '' || SHELL.includes(`./${rest}`);
}

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || !isShell(url)) return;
  event.respondWith((async () => {
    const cache = await caches.open(CACHE);
    try {
      const response = await fetch(event.request);
      if (response.ok) {
        await cache.put(event.request, response.clone());
        return response;
      }
      return (await cache.match(event.request, { ignoreSearch: true })) || response;
    } catch (e) {
      const stored = await cache.match(event.request, { ignoreSearch: true });
      if (stored) return stored;
      throw e;
    }
  })());
});
