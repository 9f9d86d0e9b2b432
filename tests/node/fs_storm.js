'use strict';
// Tens of thousands of tiny fs.stat calls a second, 16 in flight: a pool far
// busier with work items than loopbpf's uprobes should pay for. See
// protocol.js for the protocol.
const fs = require('fs');
const { now, report, waitForGo, done } = require('./protocol');

waitForGo(() => {
  const start = now();
  const until = start + 2500000000n;
  let calls = 0;
  let inflight = 16;
  const next = () =>
    fs.stat('/', () => {
      calls++;
      if (now() < until) return next();
      if (--inflight === 0) {
        const secs = Number(now() - start) / 1e9;
        report({ fs_storm: true, calls, per_s: calls / secs });
        setTimeout(done, 100);
      }
    });
  for (let i = 0; i < inflight; i++) next();
});
