// Unwind-cost target for `cargo xtask bench`: the loop is blocked in OpenSSL
// (crypto.pbkdf2Sync, no frame pointers) 200 ms out of every 250 ms, called
// from blockPbkdf2, and asleep in Atomics.wait 50 ms of it. Prints `ready`.
'use strict';
const crypto = require('crypto');

function cpuMs(f) {
  const start = process.cpuUsage();
  f();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
}
const probe = 20000;
const iterations = Math.ceil((probe * 150) / Math.max(1, cpuMs(() => crypto.pbkdf2Sync('p', 's', probe, 64, 'sha512'))));

function blockPbkdf2() {
  return crypto.pbkdf2Sync('p', 's', iterations, 64, 'sha512');
}
const cell = new Int32Array(new SharedArrayBuffer(4));
function blockAtomicsWait() {
  Atomics.wait(cell, 0, 0, 50);
}
setInterval(() => {
  blockPbkdf2();
  blockAtomicsWait();
}, 250);
console.log('ready');
