'use strict';
// The loop sleeps in Atomics.wait (a futex in the kernel) for 250 ms: blocked
// off the CPU, not busy on it. See protocol.js for the stdin/stdout protocol.
const { measure, waitForGo, done } = require('./protocol');

const cell = new Int32Array(new SharedArrayBuffer(4));
function blockAtomicsWait() {
  Atomics.wait(cell, 0, 0, 250);
}

waitForGo(() =>
  setTimeout(() => {
    measure('blockAtomicsWait', blockAtomicsWait);
    setTimeout(done, 300);
  }, 100),
);
