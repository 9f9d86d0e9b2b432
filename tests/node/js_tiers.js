'use strict';
// Blocks whose JavaScript must be named with no node flags where only the
// process's memory tells it: a function still in V8's interpreter, and
// callers of synchronous calls that wait off the CPU (execSync) or spend
// their time in OpenSSL (pbkdf2Sync). See protocol.js for the protocol.
const crypto = require('crypto');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execSync } = require('child_process');
const { measure, waitForGo, done, idleMs } = require('./protocol');

const IDLE_MS = idleMs(300);
const TARGET_MS = 300;

function cpuMs(f) {
  const start = process.cpuUsage();
  f();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
}

// A function of ~10000 statements in its loop, run once: measured with
// `perf record` and --perf-basic-prof, Node 24 and 26 run the whole call in
// Ignition (its samples end in bytecode handlers under
// InterpreterEntryTrampoline); Node 20 and 22 move it to Sparkplug code by
// on-stack replacement part way through. Small functions go to Maglev or
// TurboFan instead. It lives in a file of its own, written here, so that
// this one stays readable.
const STATEMENTS = 10000;
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'loopbpf-js-tiers-'));
const bigFile = path.join(dir, 'interpreted.js');
{
  const lines = ["'use strict';", 'function blockInterpreted(ms) {', '  let x = 0;'];
  lines.push('  const until = Date.now() + ms;', '  while (Date.now() < until) {');
  for (let i = 0; i < STATEMENTS; i++) lines.push(`    x = (x + ${i}) | 0;`);
  lines.push('  }', '  return x;', '}', 'module.exports = blockInterpreted;', '');
  fs.writeFileSync(bigFile, lines.join('\n'));
}
// Never called before its block: a second call would start in Sparkplug.
const blockInterpreted = require(bigFile);

function blockExecSync() {
  return execSync('sleep 0.3').length;
}

let pbkdf2Iterations = 0;
function blockPbkdf2Sync() {
  return crypto.pbkdf2Sync('password', 'salt', pbkdf2Iterations, 64, 'sha512');
}

function calibrate() {
  const p = cpuMs(() => crypto.pbkdf2Sync('password', 'salt', 20000, 64, 'sha512'));
  // Twice the target: on a loaded machine the block ran 126 ms of 300 asked.
  pbkdf2Iterations = Math.ceil((20000 * 2 * TARGET_MS) / Math.max(p, 1));
}

// Called through a table so that none is inlined into a caller.
const BLOCKS = [
  ['blockInterpreted', () => blockInterpreted(TARGET_MS)],
  ['blockExecSync', blockExecSync],
  ['blockPbkdf2Sync', blockPbkdf2Sync],
];

function runBlock(i) {
  if (i === BLOCKS.length) {
    fs.rmSync(dir, { recursive: true, force: true });
    setTimeout(done, IDLE_MS);
    return;
  }
  measure(...BLOCKS[i]);
  setTimeout(runBlock, IDLE_MS, i + 1);
}

calibrate();
waitForGo(() => setTimeout(runBlock, IDLE_MS, 0));
