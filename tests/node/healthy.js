'use strict';
// About two seconds of a busy but healthy loop: many short callbacks from
// immediates and short timers, each about 3 ms of synchronous work at most, with some
// small garbage. Reports how many callbacks ran and the longest one.
// See protocol.js for the stdin/stdout protocol.
const { now, report, waitForGo, done, blockMs } = require('./protocol');

// Longer on a slow machine (blockMs), where each callback costs more.
const RUN_MS = blockMs(2000);
const MAX_WORK_MS = 3;

let callbacks = 0;
let maxMs = 0;
let deadline = 0n;

// Short-lived garbage only: retained garbage makes scavenges slow enough
// (10 ms seen) to dwarf the callbacks this script means to be short.
let last = null;

function work(ms) {
  const start = now();
  const until = start + BigInt(Math.round(ms * 1e6));
  while (now() < until) last = { at: Date.now(), previous: null };
  maxMs = Math.max(maxMs, Number(now() - start) / 1e6);
  callbacks++;
}

// Each chain reschedules itself until the deadline; the two together keep
// several callbacks per second in flight, some iterations with none.
function immediateChain() {
  work(Math.random() * MAX_WORK_MS * 0.8);
  if (now() < deadline) setImmediate(immediateChain);
  else finish();
}

function timerChain() {
  work(Math.random() * MAX_WORK_MS * 0.8);
  if (now() < deadline) setTimeout(timerChain, 1 + Math.floor(Math.random() * 5));
  else finish();
}

let running = 2;
function finish() {
  if (--running > 0) return;
  report({ callbacks, max_ms: maxMs });
  done();
}

waitForGo(() => {
  deadline = now() + BigInt(RUN_MS) * 1000000n;
  setImmediate(immediateChain);
  setTimeout(timerChain, 1);
});
