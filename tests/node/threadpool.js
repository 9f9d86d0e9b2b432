'use strict';
// 32 concurrent async crypto.pbkdf2 calls: four times more work than libuv's
// default pool of 4 workers, so the pool stays saturated for several rounds
// while the event loop itself only dispatches. A 10 ms interval records how
// late the loop ran (it should stay healthy). See protocol.js for the protocol.
const crypto = require('crypto');
const { now, report, waitForGo, done } = require('./protocol');

const CALLS = Number(process.env.POOL_CALLS || 32);
const ITERATIONS = Number(process.env.PBKDF2_ITERATIONS || 300000);

waitForGo(() => {
  let maxLagMs = 0;
  let last = now();
  const ticker = setInterval(() => {
    const t = now();
    maxLagMs = Math.max(maxLagMs, Number(t - last) / 1e6 - 10);
    last = t;
  }, 10);
  const start = now();
  let left = CALLS;
  for (let i = 0; i < CALLS; i++) {
    crypto.pbkdf2('secret', 'salt' + i, ITERATIONS, 64, 'sha512', (err) => {
      if (err) throw err;
      if (--left === 0) {
        const end = now();
        clearInterval(ticker);
        report({ block: 'pbkdf2', calls: CALLS, start_ns: start.toString(), end_ns: end.toString(), ms: Number(end - start) / 1e6, max_loop_lag_ms: maxLagMs });
        setTimeout(done, 100);
      }
    });
  }
});
