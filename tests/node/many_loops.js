'use strict';
// Twelve worker threads at once, each with its own event loop ticking every
// 5 ms for 600 ms: more polling threads than a small THREADS map holds (see
// tests/tests/threads_evicted.rs). See protocol.js for the stdin/stdout protocol.
const { Worker } = require('worker_threads');
const { waitForGo, done } = require('./protocol');

const WORKERS = 12;
const code = `let n = 0; const t = setInterval(() => { if (++n === 120) clearInterval(t); }, 5);`;

waitForGo(() => {
  let left = WORKERS;
  for (let i = 0; i < WORKERS; i++) {
    new Worker(code, { eval: true }).on('exit', () => {
      if (--left === 0) setTimeout(done, 100);
    });
  }
});
