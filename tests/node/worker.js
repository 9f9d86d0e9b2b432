'use strict';
// A worker_threads Worker blocks its own event loop for 200 ms; the main loop
// stays responsive. See protocol.js for the stdin/stdout protocol.
const { Worker, isMainThread, parentPort } = require('worker_threads');

if (isMainThread) {
  const { report, waitForGo, done } = require('./protocol');
  const worker = new Worker(__filename);
  worker.once('online', () =>
    waitForGo(() => {
      worker.postMessage('go');
      worker.on('message', (m) => report(m));
      worker.on('exit', () => setTimeout(done, 100));
    }),
  );
} else {
  const { now } = require('./protocol');
  function blockInWorker(ms) {
    const until = now() + BigInt(ms) * 1000000n;
    while (now() < until);
  }
  parentPort.once('message', () =>
    setTimeout(() => {
      const start = now();
      blockInWorker(200);
      const end = now();
      parentPort.postMessage({ block: 'blockInWorker', start_ns: start.toString(), end_ns: end.toString(), ms: Number(end - start) / 1e6 });
      setTimeout(() => process.exit(0), 100);
    }, 100),
  );
}
