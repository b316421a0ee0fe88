// Helpers shared by the SDK test suites (conformance.mjs, interactions.mjs).
import assert from 'node:assert/strict';

// Awaits promise, which must reject with an error of the given HTTP status (and, when msgPart
// is given, mention it). Returns the error.
export async function rejectsWith(promise, status, msgPart) {
  let err = null;
  try {
    await promise;
  } catch (e) {
    err = e;
  }
  assert.ok(err, `expected an error with status ${status}, the call succeeded`);
  const st = err.status ?? err.statusCode ?? err.code;
  assert.equal(st, status, `expected status ${status}, got ${st}: ${err.message}`);
  if (msgPart) {
    const text = `${err.message} ${err.body ?? ''}`;
    assert.ok(text.includes(msgPart), `error should mention ${msgPart}: ${text}`);
  }
  return err;
}
