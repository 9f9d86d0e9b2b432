'use strict';
// Three event-loop blocks of different kinds, each inside a uniquely named
// function and started from its own timer, separated by idle time so that each
// is alone in its loop iteration. See protocol.js for the stdin/stdout protocol.
const { now, measure, waitForGo, done, idleMs, blockMs } = require('./protocol');

const IDLE_MS = idleMs(300);
// The JSON and regex inputs are sized for this much CPU time. The test needs
// >= 150 ms, and the same input varies by +-40% from run to run on a VM.
// Both scale with the threshold on a slow machine (blockMs).
const TARGET_MS = blockMs(400);

// Calibration counts CPU time, not wall time: other processes preempting
// this one during calibration would otherwise make the blocks too short.
function cpuMs(f) {
  const start = process.cpuUsage();
  f();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
}

function blockBusyLoop(ms) {
  const until = now() + BigInt(Math.round(ms * 1e6));
  let spins = 0;
  while (now() < until) spins++;
  return spins;
}

// Rows of small integers, built in a Buffer so no JS garbage exists before
// the block. Rows rather than one flat array: a single huge array spends
// half the parse in page faults inside libc's memmove, where user stacks
// cannot be walked, which would hide blockJsonParse from the samples.
const ROW = 1000;

function makeJson(count) {
  const row = '[' + new Array(ROW).fill('123456').join(',') + '],';
  const rows = Math.max(1, Math.round(count / ROW));
  const buf = Buffer.alloc(1 + rows * row.length);
  buf.fill(row, 1);
  buf[0] = 0x5b; // '['
  buf[buf.length - 1] = 0x5d; // ']' over the last row's comma
  return buf.toString('latin1');
}

let bigJson = '';

function blockJsonParse() {
  return JSON.parse(bigJson).length;
}

// Catastrophic backtracking: each extra 'a' doubles the time.
const EVIL = /^(a+)+$/;
let evilInput = '';

function blockRegex() {
  return EVIL.test(evilInput);
}

function calibrate() {
  // Best of three small parses; a big parse is slower per byte, never faster.
  const sampleCount = 100000;
  const sample = makeJson(sampleCount);
  let best = Infinity;
  for (let i = 0; i < 3; i++) best = Math.min(best, cpuMs(() => JSON.parse(sample)));
  bigJson = makeJson(Math.ceil((sampleCount * TARGET_MS) / best));

  // Smallest input whose match takes >= TARGET_MS / 4, then two more chars
  // (x4), then more while one run is still short. The runs also let the
  // regexp tier up to native code, as it will be in the real run.
  const matchMs = (input) => cpuMs(() => EVIL.test(input));
  const evil = (n) => 'a'.repeat(n) + '!';
  let n = 16;
  while (Math.min(matchMs(evil(n)), matchMs(evil(n))) < TARGET_MS / 4) n++;
  n += 2;
  while (matchMs(evil(n)) < TARGET_MS) n++;
  evilInput = evil(n);
}

// Called through a table so the blocking functions are never inlined into a
// caller and keep frames of their own.
const BLOCKS = [
  ['blockBusyLoop', () => blockBusyLoop(blockMs(200))],
  ['blockJsonParse', blockJsonParse],
  ['blockRegex', blockRegex],
];

function runBlock(i) {
  if (i === BLOCKS.length) {
    // One more idle period, so the last block's iteration ends with a poll
    // like the others instead of with process exit.
    setTimeout(done, IDLE_MS);
    return;
  }
  measure(...BLOCKS[i]);
  setTimeout(runBlock, IDLE_MS, i + 1);
}

calibrate();
waitForGo(() => setTimeout(runBlock, IDLE_MS, 0));
