// Keeps the page itself available offline. Network first, so a visit online always gets
// the current page; the last good copy when the network is gone. The models are not
// handled here: the page caches them itself, keyed by their sha256 (main.js).

const CACHE = 'walsh-page-v1';
const PAGE = ['./', 'index.html', 'main.js', 'style.css', 'models.json', 'pkg/walsh.js',
  'pkg/walsh_bg.wasm'];

self.addEventListener('install', (event) => {
  event.waitUntil(caches.open(CACHE).then((c) => c.addAll(PAGE)).then(() => self.skipWaiting()));
});

self.addEventListener('activate', (event) => {
  event.waitUntil(self.clients.claim());
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin ||
      url.pathname.includes('/models/')) {
    return;
  }
  event.respondWith(fetch(event.request).then((response) => {
    if (response.ok) {
      const copy = response.clone();
      event.waitUntil(caches.open(CACHE).then((c) => c.put(event.request, copy)));
    }
    return response;
  }, () => caches.match(event.request).then((hit) => hit ?? Response.error())));
});
