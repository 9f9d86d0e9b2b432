'use strict';
// One event-loop block spent in plain JavaScript arithmetic, inside a uniquely
// named function: its samples' leaf is that function's JIT code, so a CPU
// profile ranks it first. See protocol.js for the stdin/stdout protocol.
const { now, measure, waitForGo, done } = require('./protocol');

const BLOCK_MS = 400;

function blockSpin(ms) {
  const until = now() + BigInt(ms * 1e6);
  let x = 0;
  // The clock is read once per million steps: the time is in this loop.
  do {
    for (let i = 0; i < 1e6; i++) x = (x * 31 + i) | 0;
  } while (now() < until);
  return x;
}

waitForGo(() =>
  setTimeout(() => {
    measure('blockSpin', () => blockSpin(BLOCK_MS));
    setTimeout(done, 300);
  }, 100),
);
