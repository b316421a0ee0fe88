// SDK conformance: the unmodified official @google/genai SDK (3.1.0, pinned in package.json)
// drives every environments and files call against a running `paddock serve`.
//
// Run by tests/integration/test_api_sdk.py, which starts the server and passes:
//   PADDOCK_URL        base URL of the server (http://127.0.0.1:PORT)
//   PADDOCK_KEY        a key of project A with the `environments` scope
//   PADDOCK_KEY_OTHER  a key of another project with the `environments` scope
// By hand: `npm ci` here, start a server, make the keys, then `node --test conformance.mjs`.
//
// The tests share state and run in order (node:test runs a file's top-level tests one by one).

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, rmSync, symlinkSync, writeFileSync, existsSync,
         lstatSync, readlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { GoogleGenAI } from '@google/genai';
import { rejectsWith } from './lib.mjs';

const BASE = process.env.PADDOCK_URL;
const KEY = process.env.PADDOCK_KEY;
const KEY_OTHER = process.env.PADDOCK_KEY_OTHER;
if (!BASE || !KEY || !KEY_OTHER) {
  throw new Error('set PADDOCK_URL, PADDOCK_KEY and PADDOCK_KEY_OTHER (see the header of this file)');
}

const MiB = 1024 * 1024;
const ID_RE = /^env_[0-9A-Za-z]{26}$/;
const ISO_RE = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$/;
// Calls that are expected to fail must not be retried 4 times by the NextGen stack (409, 5xx).
const NO_RETRY = { retries: { strategy: 'none' } };

const ai = new GoogleGenAI({ apiKey: KEY, apiVersion: 'v1beta', httpOptions: { baseUrl: BASE } });
const other = new GoogleGenAI({ apiKey: KEY_OTHER, apiVersion: 'v1beta',
                                httpOptions: { baseUrl: BASE } });

const work = mkdtempSync(join(tmpdir(), 'paddock-sdk-'));
after(() => rmSync(work, { recursive: true, force: true }));

const sha = (b) => createHash('sha256').update(b).digest('hex');
const bytes = (s) => new Uint8Array(Buffer.from(s));

// What the tests create and later check.
const S = {
  a: null,            // the main environment
  b64: randomBytes(3000),
  big: randomBytes(9 * MiB + 12345),   // more than one 8 MiB chunk
  small: 'small upload\n',
  listIds: [],
};

function checkEnvironment(e) {
  assert.match(e.id, ID_RE);
  assert.equal(e.status, 'active');
  assert.ok(['running', 'idle', 'offline'].includes(e.state), `state ${e.state}`);
  for (const k of ['created', 'updated', 'last_accessed']) {
    assert.match(String(e[k]), ISO_RE, `${k}=${e[k]}`);
  }
  for (const k of ['file_count', 'size_bytes']) {
    assert.equal(typeof e[k], 'string', `${k} is an int64-as-string: ${JSON.stringify(e[k])}`);
    assert.match(e[k], /^\d+$/);
  }
}

async function listAllFiles(client, environment, path, extra = {}) {
  const out = [];
  let token;
  for (let i = 0; i < 1000; i++) {
    const r = await client.environments.files.list({ environment, path, ...extra,
                                                     ...(token ? { page_token: token } : {}) });
    const files = r.files ?? [];
    if (extra.page_size) assert.ok(files.length <= extra.page_size, `page of ${files.length}`);
    out.push(...files);
    token = r.next_page_token;
    if (!token) return out;
  }
  assert.fail('file listing never ended');
}

test('create with inline sources (text and base64), network and env', async () => {
  const sources = [
    { type: 'inline', target: '/workspace/a.txt', content: 'hello from inline\n' },
    { type: 'inline', target: '/workspace/dir/b.bin', content: S.b64.toString('base64'),
      encoding: 'base64' },
    { type: 'inline', target: '/workspace/dir/sub/c.txt', content: 'c' },
  ];
  const e = await ai.environments.create({
    sources,
    network: 'disabled',
    env: { FOO: 'bar', WITH_VALUE: { value: 'v1' } },
  });
  checkEnvironment(e);
  assert.equal(e.state, 'running');
  assert.deepEqual(e.sources, sources.map(({ content, ...rest }) => rest),
                   'sources echo what was given, without content');
  for (const s of e.sources) assert.equal(s.content, undefined, 'content is not echoed');
  assert.equal(e.network, 'disabled');
  assert.equal(e.env.FOO, 'bar');
  S.a = e;
  S.listIds.push(e.id);
});

test('create with an allowlist network echoes it', async () => {
  const network = { allowlist: [{ domain: '*.example.com' },
                                { domain: 'api.example.org', transform: [{ 'X-Api-Key': 'abc' }] }] };
  const e = await ai.environments.create({ network });
  checkEnvironment(e);
  assert.deepEqual(e.network, network);
  S.listIds.push(e.id);
});

test('get by id, by environments/ID and under another api_version', async () => {
  const byId = await ai.environments.get(S.a.id);
  assert.equal(byId.id, S.a.id);
  checkEnvironment(byId);
  assert.equal(byId.env.FOO, 'bar');
  const prefixed = await ai.environments.get(`environments/${S.a.id}`);
  assert.equal(prefixed.id, S.a.id);
  const alpha = await ai.environments.get(S.a.id, { api_version: 'v1alpha' });
  assert.equal(alpha.id, S.a.id);
  const v1 = new GoogleGenAI({ apiKey: KEY, httpOptions: { baseUrl: BASE } }); // default v1
  assert.equal((await v1.environments.get(S.a.id)).id, S.a.id);
});

test('Authorization: Bearer works as well as x-goog-api-key', async () => {
  const bearer = new GoogleGenAI({ apiKey: 'not-this-one', apiVersion: 'v1beta',
                                   httpOptions: { baseUrl: BASE,
                                                  headers: { Authorization: `Bearer ${KEY}` } } });
  assert.equal((await bearer.environments.get(S.a.id)).id, S.a.id);
});

test('list paginates, oldest first', async () => {
  for (let i = 0; i < 3; i++) S.listIds.push((await ai.environments.create({})).id);
  const seen = [];
  let token;
  let pages = 0;
  do {
    const r = await ai.environments.list({ page_size: 2, ...(token ? { page_token: token } : {}) });
    const envs = r.environments ?? [];
    assert.ok(envs.length <= 2, `page of ${envs.length}`);
    seen.push(...envs.map((e) => e.id));
    token = r.next_page_token;
    pages++;
    assert.ok(pages < 100, 'pagination never ends');
  } while (token);
  assert.ok(pages >= 3, `5 environments in pages of 2 need 3 pages, got ${pages}`);
  assert.deepEqual(seen.filter((id) => S.listIds.includes(id)), S.listIds);
  assert.equal(new Set(seen).size, seen.length, 'no environment listed twice');
  const all = await ai.environments.list();
  assert.deepEqual((all.environments ?? []).map((e) => e.id), seen, 'default page holds them all');
});

test('files.list: root, directory, file, leading slash, environments/ prefix', async () => {
  const id = S.a.id;
  const root = await ai.environments.files.list({ environment: id, path: '' });
  const ws = (root.files ?? []).find((f) => f.name === 'workspace');
  assert.ok(ws, `root lists workspace: ${JSON.stringify(root.files)}`);
  assert.equal(ws.type, 'directory');
  assert.equal(ws.path, 'workspace');
  for (const f of root.files) {
    assert.ok(!['proc', 'sys', 'dev'].includes(f.name) || f.type !== 'file', JSON.stringify(f));
  }

  const dir = await ai.environments.files.list({ environment: id, path: 'workspace/dir' });
  const byName = Object.fromEntries((dir.files ?? []).map((f) => [f.name, f]));
  assert.deepEqual(Object.keys(byName).sort(), ['b.bin', 'sub']);
  assert.equal(byName['b.bin'].type, 'file');
  assert.equal(byName['b.bin'].path, 'workspace/dir/b.bin');
  assert.equal(byName['b.bin'].size_bytes, '3000');
  assert.match(String(byName['b.bin'].modified), ISO_RE);
  assert.equal(byName.sub.type, 'directory');
  assert.equal(byName.sub.path, 'workspace/dir/sub');

  const slash = await ai.environments.files.list({ environment: id, path: '/workspace/dir' });
  assert.deepEqual(slash.files, dir.files, 'a leading slash is ignored');
  const prefixed = await ai.environments.files.list({ environment: `environments/${id}`,
                                                      path: 'workspace/dir' });
  assert.deepEqual(prefixed.files, dir.files, 'environments/ID is accepted');

  const file = await ai.environments.files.list({ environment: id, path: 'workspace/a.txt' });
  assert.equal(file.files.length, 1);
  assert.equal(file.files[0].name, 'a.txt');
  assert.equal(file.files[0].path, 'workspace/a.txt');
  assert.equal(file.files[0].type, 'file');
  assert.equal(file.files[0].size_bytes, String('hello from inline\n'.length));
  assert.equal(typeof file.files[0].mime_type, 'string');

  await rejectsWith(ai.environments.files.list({ environment: id, path: 'workspace/nope' },
                                               NO_RETRY), 404);
});

test('files.list recursive, in path order, paginated', async () => {
  const id = S.a.id;
  const all = await ai.environments.files.list({ environment: id, path: 'workspace',
                                                 recursive: true });
  const paths = (all.files ?? []).map((f) => f.path);
  for (const p of ['workspace/a.txt', 'workspace/dir', 'workspace/dir/b.bin', 'workspace/dir/sub',
                   'workspace/dir/sub/c.txt']) {
    assert.ok(paths.includes(p), `recursive listing has ${p}: ${paths}`);
  }
  assert.deepEqual(paths, [...paths].sort(), 'in path order');
  const paged = await listAllFiles(ai, id, 'workspace', { recursive: true, page_size: 2 });
  assert.deepEqual(paged.map((f) => f.path), paths, 'pages of 2 add up to the whole listing');
});

test('files.download: content, environments/ prefix, leading slash, 404', async () => {
  const id = S.a.id;
  const a = await ai.environments.files.download({ environment: id, path: 'workspace/a.txt' });
  assert.ok(a instanceof Uint8Array);
  assert.equal(Buffer.from(a).toString(), 'hello from inline\n');
  const b = await ai.environments.files.download({ environment: `environments/${id}`,
                                                   path: '/workspace/dir/b.bin' });
  assert.ok(Buffer.from(b).equals(S.b64), 'base64 inline source decoded');
  await rejectsWith(ai.environments.files.download({ environment: id, path: 'workspace/missing' }),
                    404);
  await rejectsWith(ai.environments.files.download({ environment: id, path: 'workspace/dir' }), 400);
});

test('files.upload: small, 9 MiB in two chunks, overwrite', async () => {
  const id = S.a.id;
  const r = await ai.environments.files.upload({ environment: id, path: 'workspace/up/small.txt',
                                                 file: bytes(S.small) });
  assert.equal(r.files.length, 1);
  assert.equal(r.files[0].path, 'workspace/up/small.txt');
  assert.equal(r.files[0].type, 'file');
  assert.equal(r.files[0].size_bytes, String(S.small.length));
  const back = await ai.environments.files.download({ environment: id, path: 'workspace/up/small.txt' });
  assert.equal(Buffer.from(back).toString(), S.small);

  const big = await ai.environments.files.upload({ environment: `environments/${id}`,
                                                   path: '/workspace/up/big.bin',
                                                   file: new Uint8Array(S.big) });
  assert.equal(big.files[0].path, 'workspace/up/big.bin');
  assert.equal(big.files[0].size_bytes, String(S.big.length));
  const bigBack = await ai.environments.files.download({ environment: id, path: 'workspace/up/big.bin' });
  assert.equal(bigBack.length, S.big.length);
  assert.equal(sha(bigBack), sha(S.big), '9 MiB upload round-trips');

  // overwrite defaults to true
  await ai.environments.files.upload({ environment: id, path: 'workspace/up/small.txt',
                                       file: bytes('replaced\n') });
  assert.equal(Buffer.from(await ai.environments.files.download({
    environment: id, path: 'workspace/up/small.txt' })).toString(), 'replaced\n');
  await ai.environments.files.upload({ environment: id, path: 'workspace/up/small.txt',
                                       file: bytes('again\n'), overwrite: true });
  assert.equal(Buffer.from(await ai.environments.files.download({
    environment: id, path: 'workspace/up/small.txt' })).toString(), 'again\n');
  // overwrite=false on a new file is fine; an empty file works too
  const empty = await ai.environments.files.upload({ environment: id, path: 'workspace/up/empty',
                                                     file: new Uint8Array(0), overwrite: false });
  assert.equal(empty.files[0].size_bytes, '0');
  assert.equal((await ai.environments.files.download({ environment: id,
                                                       path: 'workspace/up/empty' })).length, 0);
  // overwrite=false on an existing file: 400 FAILED_PRECONDITION (docs/API.md), nothing changed;
  // sent with the SDK's default retries, as a caller would
  const t0 = Date.now();
  await rejectsWith(ai.environments.files.upload({
    environment: id, path: 'workspace/up/small.txt', file: bytes('must not land\n'),
    overwrite: false }), 400, 'FAILED_PRECONDITION');
  assert.ok(Date.now() - t0 < 2000, 'not retried by the SDK');
  assert.equal(Buffer.from(await ai.environments.files.download({
    environment: id, path: 'workspace/up/small.txt' })).toString(), 'again\n');
});

function makeTree(dir) {
  mkdirSync(join(dir, 'x/deep'), { recursive: true });
  writeFileSync(join(dir, 'x/1.txt'), 'one\n');
  const two = randomBytes(70000);
  writeFileSync(join(dir, 'x/deep/2.bin'), two);
  symlinkSync('1.txt', join(dir, 'x/link'));
  return two;
}

test('files.upload with extract: tar and tar.gz are unpacked into the directory', async () => {
  const id = S.a.id;
  const src = join(work, 'tree');
  const two = makeTree(src);
  execFileSync('tar', ['-cf', join(work, 't.tar'), '-C', src, 'x']);
  execFileSync('tar', ['-czf', join(work, 't.tgz'), '-C', src, 'x']);
  for (const [name, dest] of [['t.tar', 'workspace/ex'], ['t.tgz', 'workspace/exgz']]) {
    await ai.environments.files.upload({ environment: id, path: dest, extract: true,
                                         file: new Uint8Array(readFileSync(join(work, name))) });
    const files = await listAllFiles(ai, id, dest, { recursive: true });
    const byPath = Object.fromEntries(files.map((f) => [f.path, f]));
    for (const p of ['x', 'x/deep', 'x/1.txt', 'x/deep/2.bin', 'x/link']) {
      assert.ok(byPath[`${dest}/${p}`], `${dest}/${p} extracted: ${Object.keys(byPath)}`);
    }
    assert.equal(byPath[`${dest}/x/deep`].type, 'directory');
    assert.equal(byPath[`${dest}/x/link`].type, 'symlink');
    const one = await ai.environments.files.download({ environment: id, path: `${dest}/x/1.txt` });
    assert.equal(Buffer.from(one).toString(), 'one\n');
    const got = await ai.environments.files.download({ environment: id, path: `${dest}/x/deep/2.bin` });
    assert.ok(Buffer.from(got).equals(two));
    // the archive itself is not left as a file
    assert.ok(!files.some((f) => f.name === name), `archive not stored: ${Object.keys(byPath)}`);
  }
});

test('create from_environment copies the files, in both spellings', async () => {
  const id = S.a.id;
  for (const from of [`environments/${id}`, id]) {
    const f = await ai.environments.create({ from_environment: from });
    checkEnvironment(f);
    assert.notEqual(f.id, id);
    const a = await ai.environments.files.download({ environment: f.id, path: 'workspace/a.txt' });
    assert.equal(Buffer.from(a).toString(), 'hello from inline\n');
    const big = await ai.environments.files.download({ environment: f.id, path: 'workspace/up/big.bin' });
    assert.equal(sha(big), sha(S.big));
    S.fork = S.fork ?? f.id;
  }
  // the copy is independent of its origin
  await ai.environments.files.upload({ environment: id, path: 'workspace/after-fork.txt',
                                       file: bytes('late\n') });
  await rejectsWith(ai.environments.files.download({ environment: S.fork,
                                                     path: 'workspace/after-fork.txt' }), 404);
  await rejectsWith(ai.environments.create({ from_environment: id,
                                             sources: [{ type: 'inline', target: '/x', content: 'x' }] },
                                           NO_RETRY), 400);
});

function untar(tarPath, dest) {
  mkdirSync(dest, { recursive: true });
  execFileSync('tar', ['-xf', tarPath, '-C', dest, '--no-same-owner']);
  return execFileSync('tar', ['-tvf', tarPath, '--numeric-owner'], { maxBuffer: 64 * MiB })
    .toString().split('\n').filter(Boolean);
}

test('snapshot: ai.files.download of files/environment-ID is a tar of the own files', async () => {
  const id = S.a.id;
  const tarPath = join(work, 'snap.tar');
  await ai.files.download({ file: `files/environment-${id}`, downloadPath: tarPath });
  assert.ok(existsSync(tarPath));
  const dest = join(work, 'snap');
  const listing = untar(tarPath, dest);
  const names = listing.map((l) => l.split(/\s+/).slice(5).join(' ').replace(/ -> .*/, '')
    .replace(/\/$/, '').replace(/^\.\//, ''));
  const read = (p) => readFileSync(join(dest, p));
  assert.equal(read('workspace/a.txt').toString(), 'hello from inline\n');
  assert.ok(read('workspace/dir/b.bin').equals(S.b64));
  assert.equal(read('workspace/dir/sub/c.txt').toString(), 'c');
  assert.equal(read('workspace/up/small.txt').toString(), 'again\n');
  assert.equal(sha(read('workspace/up/big.bin')), sha(S.big));
  assert.equal(read('workspace/up/empty').length, 0);
  assert.equal(read('workspace/ex/x/1.txt').toString(), 'one\n');
  assert.ok(lstatSync(join(dest, 'workspace/ex/x/link')).isSymbolicLink());
  assert.equal(readlinkSync(join(dest, 'workspace/ex/x/link')), '1.txt');
  assert.equal(read('workspace/after-fork.txt').toString(), 'late\n');
  // owners as seen inside the sandbox: the files the server wrote belong to root there
  const aLine = listing.find((l) => / (\.\/)?workspace\/a\.txt$/.test(l));
  assert.ok(aLine, `a.txt in listing:\n${listing.join('\n')}`);
  assert.match(aLine.split(/\s+/)[1], /^0\/0$/, `owner inside the sandbox: ${aLine}`);
  // only what the environment added or changed: nothing of the base image
  for (const base of ['etc/passwd', 'bin/sh', 'usr/bin/env', 'usr/lib']) {
    assert.ok(!names.includes(base), `base image file ${base} is not in the snapshot`);
  }
  assert.ok(!names.some((n) => n.startsWith('proc/') || n.startsWith('sys/')), 'no /proc or /sys');

  // the bare name works too
  const bare = join(work, 'snap2.tar');
  await ai.files.download({ file: `environment-${id}`, downloadPath: bare });
  const dest2 = join(work, 'snap2');
  untar(bare, dest2);
  assert.equal(readFileSync(join(dest2, 'workspace/a.txt')).toString(), 'hello from inline\n');

  await rejectsWith(ai.files.download({ file: 'files/environment-env_00000000000000000000000000',
                                        downloadPath: join(work, 'none.tar') }), 404);
});

test('errors surface with their status and the field named', async () => {
  const err = await rejectsWith(ai.environments.create({
    sources: [{ type: 'inline', target: '/workspace/ok.txt', content: 'ok' },
              { type: 'inline', target: 'relative/path', content: 'x' }] }, NO_RETRY), 400,
  'sources[1].target');
  assert.ok(err.body.includes('INVALID_ARGUMENT'), err.body);
  await rejectsWith(ai.environments.get('env_00000000000000000000000000', null, NO_RETRY), 404);
});

test('another project sees none of it (404, as if missing)', async () => {
  const id = S.a.id;
  await rejectsWith(other.environments.get(id, null, NO_RETRY), 404);
  const mine = await other.environments.list();
  assert.ok(!(mine.environments ?? []).some((e) => S.listIds.includes(e.id)));
  await rejectsWith(other.environments.files.list({ environment: id, path: '' }, NO_RETRY), 404);
  await rejectsWith(other.environments.files.download({ environment: id, path: 'workspace/a.txt' }),
                    404);
  await rejectsWith(other.environments.files.upload({ environment: id, path: 'workspace/evil',
                                                      file: bytes('x') }, NO_RETRY), 404);
  await rejectsWith(other.files.download({ file: `files/environment-${id}`,
                                           downloadPath: join(work, 'other.tar') }), 404);
  await rejectsWith(other.environments.delete(id, null, NO_RETRY), 404);
  assert.equal((await ai.environments.get(id)).id, id, 'still there for its own project');
  await rejectsWith(ai.environments.files.download({ environment: id, path: 'workspace/evil' }), 404);
});

test('delete answers {} and the environment is gone', async () => {
  const id = S.fork;
  const r = await ai.environments.delete(id);
  const { sdkHttpResponse, ...rest } = r;
  assert.deepEqual(rest, {});
  await rejectsWith(ai.environments.get(id, null, NO_RETRY), 404);
  const all = await ai.environments.list();
  assert.ok(!(all.environments ?? []).some((e) => e.id === id));
  await rejectsWith(ai.environments.delete(id, null, NO_RETRY), 404);
  await rejectsWith(ai.environments.files.list({ environment: id, path: '' }, NO_RETRY), 404);
});
