// Threadpool cost target for `cargo xtask bench`: fs.stat at a fixed rate
// (RATE items/s in batches every 10 ms, below loopbpf's 2000/s guard), for
// SECONDS after "go" on stdin; then prints the process's CPU time per item
// (all threads: the loop submitting, the workers running, uprobes included).
'use strict';
const fs = require('fs');
const RATE = Number(process.env.RATE || 1500);
const SECONDS = Number(process.env.SECONDS || 4);
process.stdin.once('data', () => {
  process.stdin.destroy();
  const batch = RATE / 100;
  let done = 0;
  const cpu0 = process.cpuUsage();
  const t0 = process.hrtime.bigint();
  const timer = setInterval(() => {
    for (let i = 0; i < batch; i++) fs.stat('/', () => done++);
  }, 10);
  setTimeout(() => {
    clearInterval(timer);
    setTimeout(() => {
      const cpu = process.cpuUsage(cpu0);
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      const us = cpu.user + cpu.system;
      console.log(JSON.stringify({ items: done, per_s: done / secs, cpu_us_per_item: us / done }));
    }, 200);
  }, SECONDS * 1000);
});
console.log('ready');
