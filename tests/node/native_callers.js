'use strict';
// Blocks whose time is spent in native code built without frame pointers
// (OpenSSL, zlib, glibc, an addon), each called from a uniquely named
// JavaScript function that loopbpf must find above that code. See
// protocol.js for the stdin/stdout protocol. LOOPBPF_TEST_ADDON names the
// futex addon (tests/node/futex_addon.c) built by the test.
const crypto = require('crypto');
const zlib = require('zlib');
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync, spawn } = require('child_process');
const { measure, waitForGo, done } = require('./protocol');

const IDLE_MS = 300;
const TARGET_MS = 300;
const addon = require(process.env.LOOPBPF_TEST_ADDON);

function cpuMs(f) {
  const start = process.cpuUsage();
  f();
  const used = process.cpuUsage(start);
  return (used.user + used.system) / 1000;
}

// Work sizes scaled to TARGET_MS from a small calibration run.
let pbkdf2Iterations = 0;
let scryptRounds = 0;
let gzipRounds = 0;
const gzipInput = crypto.randomBytes(1 << 20);

function blockPbkdf2() {
  return crypto.pbkdf2Sync('password', 'salt', pbkdf2Iterations, 64, 'sha512');
}

function blockScrypt() {
  let n = 0;
  for (let i = 0; i < scryptRounds; i++) n += crypto.scryptSync('password', 'salt' + i, 64).length;
  return n;
}

function blockGzip() {
  let n = 0;
  for (let i = 0; i < gzipRounds; i++) n += zlib.gzipSync(gzipInput, { level: 9 }).length;
  return n;
}

const cell = new Int32Array(new SharedArrayBuffer(4));
function blockAtomicsWait() {
  Atomics.wait(cell, 0, 0, TARGET_MS);
}

// A FIFO whose writer opens it only after a while: the read blocks in open().
const fifo = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'loopbpf-fifo-')), 'slow');
execFileSync('mkfifo', [fifo]);
function blockReadSlowFile() {
  return fs.readFileSync(fifo).length;
}

function blockAddonFutex() {
  addon.futexWait300ms();
}

function calibrate() {
  const p = cpuMs(() => crypto.pbkdf2Sync('password', 'salt', 20000, 64, 'sha512'));
  pbkdf2Iterations = Math.ceil((20000 * TARGET_MS) / Math.max(p, 1));
  const s = cpuMs(() => crypto.scryptSync('password', 'salt', 64));
  scryptRounds = Math.ceil(TARGET_MS / Math.max(s, 1));
  const g = cpuMs(() => zlib.gzipSync(gzipInput, { level: 9 }));
  gzipRounds = Math.ceil(TARGET_MS / Math.max(g, 1));
}

const BLOCKS = [
  ['blockPbkdf2', blockPbkdf2],
  ['blockScrypt', blockScrypt],
  ['blockGzip', blockGzip],
  ['blockAtomicsWait', blockAtomicsWait],
  [
    'blockReadSlowFile',
    () => {
      // The writer waits, then opens the FIFO, writes and closes it.
      spawn('sh', ['-c', `sleep 0.3; printf slow > '${fifo}'`], { stdio: 'ignore' });
      blockReadSlowFile();
    },
  ],
  ['blockAddonFutex', blockAddonFutex],
];

function runBlock(i) {
  if (i === BLOCKS.length) {
    fs.rmSync(path.dirname(fifo), { recursive: true, force: true });
    // The mappings, so the test can check every frame's address is code.
    setTimeout(() => done({ maps: fs.readFileSync('/proc/self/maps', 'utf8') }), IDLE_MS);
    return;
  }
  measure(...BLOCKS[i]);
  setTimeout(runBlock, IDLE_MS, i + 1);
}

calibrate();
waitForGo(() => setTimeout(runBlock, IDLE_MS, 0));
