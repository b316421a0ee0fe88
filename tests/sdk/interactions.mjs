// Interactions and agents through the unmodified official @google/genai SDK (3.1.0, pinned in
// package.json), against a running `paddock serve` whose model is a scripted fake.
//
// Run by tests/integration/test_interactions_sdk.py, which starts the fake model and the server
// and passes:
//   PADDOCK_URL   base URL of the server (http://127.0.0.1:PORT)
//   PADDOCK_KEY   a key with the interactions, agents and environments scopes
//   FAKE_URL      the fake model's base URL (control: POST /_script, GET /_requests, POST /_reset)
//   PADDOCK_SLOWDOWN  optional factor for the timing bounds (3 for sanitizer builds)
// The server's default model is openai:fake (served by the fake).
//
// The tests run in order (node:test runs a file's top-level tests one by one) and share state.

import { test } from 'node:test';
import assert from 'node:assert/strict';

import { GoogleGenAI } from '@google/genai';
import { rejectsWith } from './lib.mjs';

const BASE = process.env.PADDOCK_URL;
const KEY = process.env.PADDOCK_KEY;
const FAKE = process.env.FAKE_URL;
if (!BASE || !KEY || !FAKE) {
  throw new Error('set PADDOCK_URL, PADDOCK_KEY and FAKE_URL (see the header of this file)');
}

const AGENT = 'antigravity-preview-05-2026';
// Timing bounds are multiplied by this (3 under the sanitizers).
const SLOW = Number(process.env.PADDOCK_SLOWDOWN || 1);
const NO_RETRY = { retries: { strategy: 'none' } };
const ai = new GoogleGenAI({ apiKey: KEY, apiVersion: 'v1beta', httpOptions: { baseUrl: BASE } });
const S = {};

// ---- the fake model ----

async function script(steps) {
  let r = await fetch(`${FAKE}/_reset`, { method: 'POST' });
  assert.equal(r.status, 200);
  r = await fetch(`${FAKE}/_script`, { method: 'POST', body: JSON.stringify({ steps }) });
  assert.equal(r.status, 200);
}
async function requests() {
  return (await fetch(`${FAKE}/_requests`)).json();
}
const bash = (command) => ({ calls: [{ name: 'bash', args: { command } }] });

// The system prompt and conversation text of one recorded OpenAI-format request.
const systemOf = (q) => q.body.messages.filter((m) => m.role === 'system').map((m) => m.content).join('\n');
const textOf = (q) => q.body.messages.filter((m) => m.role === 'user' || m.role === 'assistant')
  .map((m) => (typeof m.content === 'string' ? m.content : '')).join('\n');
const toolResultsOf = (q) => q.body.messages.filter((m) => m.role === 'tool');

// ---- helpers ----

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const stepTypes = (it) => it.steps.map((s) => s.type).filter((t) => t !== 'thought');

async function waitFor(id, pred, what, ms = 30000 * SLOW) {
  const end = Date.now() + ms;
  for (;;) {
    const it = await ai.interactions.get(id);
    if (pred(it)) return it;
    assert.ok(Date.now() < end, `${id} never ${what}: ${JSON.stringify(it).slice(0, 2000)}`);
    await sleep(50);
  }
}
const FINAL = ['completed', 'failed', 'cancelled', 'incomplete', 'budget_exceeded', 'requires_action'];
const waitFinal = (id) => waitFor(id, (it) => FINAL.includes(it.status), 'ended');

async function collect(stream) {
  const out = [];
  for await (const ev of stream) out.push(ev);
  return out;
}

function checkOrder(events) {
  const kinds = events.map((e) => e.event_type);
  assert.equal(kinds[0], 'interaction.created', kinds.join());
  assert.equal(kinds[1], 'interaction.status_update');
  assert.equal(events[1].status, 'in_progress');
  assert.equal(kinds.at(-1), 'interaction.completed', kinds.join());
  for (const e of events) assert.equal(typeof e.event_id, 'string', JSON.stringify(e));
  const ids = events.map((e) => Number(e.event_id));
  assert.deepEqual(ids, [...ids].sort((a, b) => a - b));
  assert.equal(new Set(ids).size, ids.length);
  const open = new Set();
  for (const e of events) {
    if (e.event_type === 'step.start') open.add(e.index);
    if (e.event_type === 'step.delta') assert.ok(open.has(e.index), JSON.stringify(e));
    if (e.event_type === 'step.stop') assert.ok(open.delete(e.index), JSON.stringify(e));
  }
  assert.equal(open.size, 0);
}

// ---- tests ----

test('unary create in a remote environment: output_text, steps, usage', async () => {
  await script([bash('echo sdk-file > /workspace/sdk.txt && echo wrote'), { text: 'Hello from paddock' }]);
  const it = await ai.interactions.create({ agent: AGENT, input: 'write a file', environment: 'remote' });
  assert.equal(it.status, 'completed', JSON.stringify(it));
  assert.equal(it.output_text, 'Hello from paddock');
  assert.match(it.id, /^int_/);
  assert.match(it.environment_id, /^env_/);
  assert.deepEqual(stepTypes(it), ['user_input', 'code_execution_call', 'code_execution_result', 'model_output']);
  const call = it.steps.find((s) => s.type === 'code_execution_call');
  const res = it.steps.find((s) => s.type === 'code_execution_result');
  assert.equal(res.call_id, call.id);
  assert.equal(call.arguments.language, 'bash');
  assert.match(res.result, /wrote/);
  assert.equal(it.usage.total_tokens, it.usage.total_input_tokens + it.usage.total_output_tokens
               + (it.usage.total_thought_tokens ?? 0) + (it.usage.total_tool_use_tokens ?? 0));
  const file = await ai.environments.files.download({ environment: it.environment_id, path: 'workspace/sdk.txt' });
  assert.equal(Buffer.from(file).toString(), 'sdk-file\n');
  const reqs = await requests();
  assert.equal(reqs.length, 2);
  assert.match(toolResultsOf(reqs[1])[0].content, /wrote/);
  S.first = it;
});

test('streaming: event order, [DONE], resume with last_event_id', async () => {
  await script([bash('echo streamed'), { text: 'streamed answer' }]);
  const stream = await ai.interactions.create({ agent: AGENT, input: 'stream please', stream: true });
  const events = await collect(stream);
  checkOrder(events);
  const id = events[0].interaction.id;
  assert.equal(events.at(-1).interaction.status, 'completed');
  const text = events.filter((e) => e.event_type === 'step.delta' && e.delta.type === 'text')
    .map((e) => e.delta.text).join('');
  assert.equal(text, 'streamed answer');
  assert.ok(events.some((e) => e.event_type === 'step.delta' && e.delta.type === 'code_execution_result'
                       && /streamed/.test(e.delta.result)));
  // Resume after the third event: exactly the rest.
  const cut = events[2].event_id;
  const rest = await collect(await ai.interactions.get(id, { stream: true, last_event_id: cut }));
  assert.deepEqual(rest.map((e) => e.event_id), events.slice(3).map((e) => e.event_id));
  assert.deepEqual(rest, events.slice(3));
  // The stored interaction matches.
  const it = await ai.interactions.get(id);
  assert.equal(it.output_text, 'streamed answer');
});

test('background with polling get', async () => {
  await script([bash('sleep 1; echo bg'), { text: 'background done' }]);
  const t0 = Date.now();
  const it = await ai.interactions.create({ agent: AGENT, input: 'in the background', background: true });
  assert.ok(Date.now() - t0 < 900 * SLOW, 'background create answers at once');
  assert.ok(['queued', 'in_progress'].includes(it.status), it.status);
  const done = await waitFinal(it.id);
  assert.equal(done.status, 'completed');
  assert.equal(done.output_text, 'background done');
  const withInput = await ai.interactions.get(it.id, { include_input: true });
  assert.equal(withInput.input, 'in the background');
});

test('cancel a running background interaction', async () => {
  await script([bash('sleep 60'), { text: 'never' }]);
  const it = await ai.interactions.create({ agent: AGENT, input: 'sleep', background: true });
  await waitFor(it.id, (x) => x.steps.some((s) => s.type === 'code_execution_call'), 'ran bash');
  const c = await ai.interactions.cancel(it.id);
  assert.equal(c.status, 'cancelled');
  const after = await waitFinal(it.id);
  assert.equal(after.status, 'cancelled');
  assert.ok(after.steps.some((s) => s.type === 'code_execution_call'), 'steps are kept');
});

test('previous_interaction_id: same environment, files persist, the model sees earlier turns', async () => {
  await script([bash('cat /workspace/sdk.txt'), { text: 'second turn' }]);
  const it = await ai.interactions.create({ agent: AGENT, input: 'read it back',
                                            previous_interaction_id: S.first.id });
  assert.equal(it.status, 'completed');
  assert.equal(it.environment_id, S.first.environment_id);
  const res = it.steps.find((s) => s.type === 'code_execution_result');
  assert.match(res.result, /sdk-file/);
  const [q] = await requests();
  const seen = textOf(q);
  assert.ok(seen.includes('write a file') && seen.includes('Hello from paddock')
            && seen.includes('read it back'), seen);
});

test('requires_action round trip with a client function', async () => {
  const tools = [{ type: 'function', name: 'get_time', description: 'current time',
                   parameters: { type: 'object', properties: { tz: { type: 'string' } } } }];
  await script([{ calls: [{ name: 'get_time', args: { tz: 'UTC' } }] }]);
  const a = await ai.interactions.create({ model: 'openai:fake', input: 'what time is it?', tools });
  assert.equal(a.status, 'requires_action');
  const call = a.steps.at(-1);
  assert.equal(call.type, 'function_call');
  assert.equal(call.name, 'get_time');
  assert.deepEqual(call.arguments, { tz: 'UTC' });
  await script([{ text: 'It is noon.' }]);
  const b = await ai.interactions.create({
    model: 'openai:fake', previous_interaction_id: a.id, tools,
    input: [{ type: 'function_result', call_id: call.id, name: 'get_time', result: '12:00 UTC' }],
  });
  assert.equal(b.status, 'completed');
  assert.equal(b.output_text, 'It is noon.');
  const [q] = await requests();
  const results = toolResultsOf(q);
  assert.equal(results.length, 1);
  assert.equal(results[0].tool_call_id, call.id);
  assert.match(results[0].content, /12:00 UTC/);
});

test('budget_exceeded: steps, tokens and time', async () => {
  await script([{ ...bash('true'), repeat: true }]);
  let it = await ai.interactions.create({ agent: AGENT, input: 'loop',
                                          agent_config: { type: 'antigravity', max_steps: 2 } });
  assert.equal(it.status, 'budget_exceeded');
  assert.ok(it.errors?.length, JSON.stringify(it));
  assert.equal((await requests()).length, 2);

  await script([{ ...bash('true'), usage: { input: 60, output: 10 }, repeat: true }]);
  it = await ai.interactions.create({ agent: AGENT, input: 'tokens',
                                      agent_config: { type: 'antigravity', max_total_tokens: '100' } });
  assert.equal(it.status, 'budget_exceeded');
  assert.ok(it.usage.total_tokens >= 100);
  assert.ok(it.steps.some((s) => s.type === 'code_execution_call'), 'steps are kept');

  await script([bash('sleep 30')]);
  const t0 = Date.now();
  it = await ai.interactions.create({ agent: AGENT, input: 'slow',
                                      agent_config: { type: 'antigravity', timeout_s: 1 } });
  assert.equal(it.status, 'budget_exceeded');
  assert.ok(Date.now() - t0 < 6000 * SLOW, `took ${Date.now() - t0} ms`);
});

test('idempotency key through httpOptions.headers', async () => {
  await script([{ text: 'only once' }, { text: 'twice?' }]);
  const key = `sdk-idem-${Date.now()}`;
  const idem = new GoogleGenAI({ apiKey: KEY, apiVersion: 'v1beta',
                                 httpOptions: { baseUrl: BASE, headers: { 'Idempotency-Key': key } } });
  const a = await idem.interactions.create({ model: 'openai:fake', input: 'x' });
  const b = await idem.interactions.create({ model: 'openai:fake', input: 'x' });
  assert.equal(a.id, b.id);
  assert.equal(b.output_text, 'only once');
  assert.equal((await requests()).length, 1);
});

test('agents: create, list, get, run, delete', async () => {
  const id = `sdk-agent-${Date.now()}`;
  const created = await ai.agents.create({
    id, description: 'sdk agent', system_instruction: 'SDK-SYS-MARK answer briefly',
    agent_config: { type: 'antigravity', model: 'openai:fake' },
  });
  assert.equal(created.id, id);
  assert.equal(created.system_instruction, 'SDK-SYS-MARK answer briefly');
  const got = await ai.agents.get(id);
  assert.equal(got.description, 'sdk agent');
  const ids = [];
  let token;
  for (let i = 0; i < 100; i++) {
    const page = await ai.agents.list({ page_size: 1, ...(token ? { page_token: token } : {}) });
    ids.push(...(page.agents ?? []).map((a) => a.id));
    token = page.next_page_token;
    if (!token) break;
  }
  assert.ok(ids.includes(id), ids.join());
  await script([{ text: 'stored agent ran' }]);
  const it = await ai.interactions.create({ agent: id, input: 'go' });
  assert.equal(it.status, 'completed');
  assert.equal(it.output_text, 'stored agent ran');
  const [q] = await requests();
  assert.match(systemOf(q), /SDK-SYS-MARK/);
  await ai.agents.delete(id);
  await rejectsWith(ai.agents.get(id, undefined, NO_RETRY), 404);
});

test('errors map to the SDK error classes; delete', async () => {
  await rejectsWith(ai.interactions.create({ input: 'no model nor agent' }, NO_RETRY), 400);
  await rejectsWith(ai.interactions.get('int_doesnotexist', undefined, NO_RETRY), 404);
  await rejectsWith(ai.interactions.create({ model: 'openai:fake', input: 'x', store: false,
                                             background: true }, NO_RETRY), 400);
  await script([{ text: 'to delete' }]);
  const it = await ai.interactions.create({ model: 'openai:fake', input: 'x' });
  assert.equal(await ai.interactions.delete(it.id), undefined);
  await rejectsWith(ai.interactions.get(it.id, undefined, NO_RETRY), 404);
});
