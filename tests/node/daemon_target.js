'use strict';
// A long-running Node process for the daemon tests: idles on a timer (so its
// loop polls) until told on stdin `block MS` (block the loop that long in
// daemonBlock, then print {"block":…}), `pbkdf2 N` (N concurrent async
// crypto.pbkdf2 calls on the threadpool, then print {"pbkdf2":N,"ms":…}) or
// `workers N [MS]` (start and end N worker threads one after another, each
// running its own event loop for MS ms, default 25, then print {"workers":N}),
// `flood MS N` (the main thread and N worker threads each sleep 0.3 ms at a
// time, over and over, for MS ms inside one busy iteration of their loops:
// every sleep is an off-CPU interval with stacks, the largest record the
// kernel side sends; then print {"flood":N,"waits":…}) or `exit` (process.exit(0)).
// Prints {"script":"ready","pid":N} once running. DAEMON_TARGET_TITLE, when
// set, becomes process.title (and so the process's comm) first.

function daemonBlock(ms) {
  const until = process.hrtime.bigint() + BigInt(ms) * 1000000n;
  let spins = 0;
  while (process.hrtime.bigint() < until) spins++;
  return spins;
}

function handle(line) {
  const [cmd, arg] = line.trim().split(/\s+/);
  if (cmd === 'block') {
    // From a timer, so the block is alone in its iteration.
    setTimeout(() => {
      const start = process.hrtime.bigint();
      daemonBlock(Number(arg));
      const ms = Number(process.hrtime.bigint() - start) / 1e6;
      process.stdout.write(JSON.stringify({ block: 'daemonBlock', ms }) + '\n');
    }, 20);
  } else if (cmd === 'pbkdf2') {
    const start = process.hrtime.bigint();
    let left = Number(arg);
    for (let i = 0; i < Number(arg); i++) {
      require('crypto').pbkdf2('secret', 'salt' + i, 150000, 64, 'sha512', () => {
        if (--left === 0) {
          const ms = Number(process.hrtime.bigint() - start) / 1e6;
          process.stdout.write(JSON.stringify({ pbkdf2: Number(arg), ms }) + '\n');
        }
      });
    }
  } else if (cmd === 'workers') {
    const { Worker } = require('worker_threads');
    // Each lives `ms` (third word, default 25): 5 ms timer iterations.
    const ticks = Math.max(5, Math.round(Number(line.trim().split(/\s+/)[2] || 25) / 5));
    const code = `let n = 0; const t = setInterval(() => { if (++n === ${ticks}) clearInterval(t); }, 5);`;
    let left = Number(arg);
    const next = () => {
      if (left-- === 0) {
        process.stdout.write(JSON.stringify({ workers: Number(arg) }) + '\n');
        return;
      }
      new Worker(code, { eval: true }).on('exit', next);
    };
    next();
  } else if (cmd === 'flood') {
    const { Worker } = require('worker_threads');
    const ms = Number(arg);
    const n = Number(line.trim().split(/\s+/)[2] || 0);
    // From a timer, so each loop has polled (and its iteration is open).
    const body = `(ms) => { const cell = new Int32Array(new SharedArrayBuffer(4));
      const until = Date.now() + ms; let waits = 0;
      while (Date.now() < until) { Atomics.wait(cell, 0, 0, 0.3); waits++; } return waits; }`;
    let waits = 0;
    let left = n + 1;
    const finished = (w) => {
      waits += w;
      if (--left === 0) process.stdout.write(JSON.stringify({ flood: n, waits }) + '\n');
    };
    for (let i = 0; i < n; i++) {
      const code = `const { parentPort } = require('worker_threads');
        setTimeout(() => parentPort.postMessage((${body})(${ms})), 20);`;
      new Worker(code, { eval: true }).on('message', finished);
    }
    setTimeout(() => finished(eval(body)(ms)), 20);
  } else if (cmd === 'exit') {
    process.exit(0);
  }
}

if (process.env.DAEMON_TARGET_TITLE) process.title = process.env.DAEMON_TARGET_TITLE;

let pending = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  pending += chunk;
  let nl;
  while ((nl = pending.indexOf('\n')) >= 0) {
    handle(pending.slice(0, nl));
    pending = pending.slice(nl + 1);
  }
});
setInterval(() => {}, 50);
process.stdout.write(JSON.stringify({ script: 'ready', pid: process.pid }) + '\n');
