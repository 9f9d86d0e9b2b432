'use strict';
// A process with every kind of thread, all idle when loopbpf attaches: the
// libuv threadpool (started by one pbkdf2 call), a worker_threads Worker, V8's
// platform threads. See protocol.js for the stdin/stdout protocol.
const crypto = require('crypto');
const { Worker } = require('worker_threads');
const { waitForGo, done } = require('./protocol');

const worker = new Worker('require("worker_threads").parentPort.on("message", () => process.exit(0))', { eval: true });
worker.once('online', () =>
  crypto.pbkdf2('secret', 'salt', 1000, 32, 'sha256', () =>
    waitForGo(() =>
      setTimeout(() => {
        worker.postMessage('exit');
        worker.once('exit', () => done());
      }, 1000),
    ),
  ),
);
