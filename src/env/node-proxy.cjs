'use strict';
// paddock puts this file in every sandbox at /etc/paddock/node-proxy.cjs and loads it into node
// with NODE_OPTIONS=--require when the environment has a network. Node's built-in fetch
// (undici) ignores HTTP_PROXY/HTTPS_PROXY before Node 24, so without it `fetch()` in a sandbox
// finds no route out. It makes fetch's global dispatcher open every connection through the
// egress proxy: a CONNECT tunnel, then TLS to the destination for https. NO_PROXY hosts are
// dialled directly. It changes nothing else, and any failure here leaves node as it was.
(() => {
  const env = process.env;
  const proxy = env.HTTPS_PROXY || env.https_proxy || env.HTTP_PROXY || env.http_proxy;
  const native = env.NODE_USE_ENV_PROXY === '1';
  if (!proxy || native || typeof globalThis.fetch !== 'function') return;
  let p;
  try {
    p = new URL(proxy);
  } catch {
    return;
  }
  const net = require('net');
  const tls = require('tls');
  const SYM = Symbol.for('undici.globalDispatcher.1');
  const noProxy = (env.NO_PROXY || env.no_proxy || '').split(',').map((s) => s.trim().toLowerCase())
    .filter(Boolean);
  const bypass = (host) => noProxy.some((n) => n === '*' || host === n ||
    (n.startsWith('.') ? host.endsWith(n) : host.endsWith('.' + n)));
  const MAX_HEAD = 16384;
  // The URL's user and password, as every other client sends them (they attribute the
  // connection to an interaction in the egress audit; nothing is refused without them).
  let auth = '';
  try {
    if (p.username) {
      auth = 'Proxy-Authorization: Basic ' + Buffer.from(decodeURIComponent(p.username) + ':' +
        decodeURIComponent(p.password)).toString('base64') + '\r\n';
    }
  } catch {
    auth = '';
  }

  function secure(sock, opts, cb) {
    const t = tls.connect({ socket: sock, servername: opts.servername || opts.hostname,
      ALPNProtocols: ['http/1.1'] });
    t.once('secureConnect', () => { t.removeListener('error', cb); cb(null, t); });
    t.once('error', cb);
  }

  // undici's connector: (opts, callback(err, socket)).
  function connect(opts, cb) {
    const host = String(opts.hostname).replace(/^\[|\]$/g, '').toLowerCase();
    const https = opts.protocol === 'https:';
    const port = Number(opts.port) || (https ? 443 : 80);
    let done = false;
    const once = (err, s) => { if (!done) { done = true; cb(err, s); } };
    if (bypass(host)) {
      const s = net.connect(port, host);
      s.once('error', once);
      s.once('connect', () => { s.removeListener('error', once); https ? secure(s, opts, once) : once(null, s); });
      return;
    }
    const authority = host.includes(':') ? `[${host}]:${port}` : `${host}:${port}`;
    const s = net.connect(Number(p.port) || 80, p.hostname.replace(/^\[|\]$/g, ''));
    let head = Buffer.alloc(0);
    const fail = (err) => { s.destroy(); once(err); };
    s.once('error', fail);
    s.once('connect', () => s.write(`CONNECT ${authority} HTTP/1.1\r\nHost: ${authority}\r\n${auth}\r\n`));
    s.on('data', function onData(chunk) {
      head = Buffer.concat([head, chunk]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) {
        if (head.length > MAX_HEAD) fail(new Error('egress proxy: CONNECT answer too long'));
        return;
      }
      s.removeListener('data', onData);
      const status = head.subarray(0, head.indexOf('\r\n')).toString('latin1');
      if (!/^HTTP\/1\.[01] 200/.test(status)) {
        // The proxy's refusal names the destination and the reason: pass it on.
        const body = head.subarray(end + 4).toString('utf8').trim();
        fail(new Error(`egress proxy refused ${authority}: ${status}${body ? ': ' + body : ''}`));
        return;
      }
      if (end + 4 < head.length) s.unshift(head.subarray(end + 4));
      s.removeListener('error', fail);
      https ? secure(s, opts, once) : once(null, s);
    });
  }

  function install() {
    const current = globalThis[SYM];
    const Agent = current && current.constructor;
    if (typeof Agent === 'function' && !current.__paddock) {
      const a = new Agent({ connect });
      Object.defineProperty(a, '__paddock', { value: true });
      globalThis[SYM] = a;
    }
  }

  // undici loads (and makes its global dispatcher) on the first fetch. The first call loads
  // it with a data: URL, which dispatches nothing, then installs the proxying agent before
  // the caller's request is made.
  const orig = globalThis.fetch;
  let ready = false;
  function fetch(input, init) {
    if (!ready) {
      ready = true;
      try {
        orig('data:,').catch(() => {});
        install();
      } catch {
        // leave fetch as node made it
      }
    }
    return orig(input, init);
  }
  Object.defineProperty(globalThis, 'fetch', { value: fetch, writable: true, configurable: true,
    enumerable: false });
})();
