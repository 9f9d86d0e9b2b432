'use strict';
// A loop that never comes back: the 3 a.m. case. The test kills this process
// with SIGKILL once loopbpf has announced the stall, as a supervisor would.
// See protocol.js for the stdin/stdout protocol.
const { now, report, waitForGo } = require('./protocol');

function spinUntilKilled() {
  let spins = 0;
  for (;;) spins += Number(now() & 1n);
}

waitForGo(() =>
  setTimeout(() => {
    report({ block: 'spinUntilKilled', start_ns: now().toString() });
    spinUntilKilled();
  }, 100),
);
