'use strict';
// The loop spins for 400 ms of wall time while a hog at nice -20 takes its CPU
// (this process runs at nice 19: CFS gives it ~0.02% of the CPU against the
// hog): the iteration is mostly runnable but not running. Run it pinned to
// one CPU (taskset): the hog, a child, inherits that affinity. (A real-time
// hog would be starker, and can take a CPU for good if anything goes wrong.)
// See protocol.js for the stdin/stdout protocol.
const { spawn } = require('child_process');
const os = require('os');
const { now, measure, waitForGo, done } = require('./protocol');

function spinStarved(ms) {
  const until = now() + BigInt(ms) * 1000000n;
  let spins = 0;
  while (now() < until) spins++;
  return spins;
}

os.setPriority(19);
waitForGo(() =>
  setTimeout(() => {
    // nice is relative to ours (19): -39 gives the hog nice -20. It spins for
    // 300 ms and ends itself.
    const spin300 = 'const e = Date.now() + 300; while (Date.now() < e);';
    const hog = spawn('nice', ['-n', '-39', process.execPath, '-e', spin300], { stdio: 'ignore' });
    measure('spinStarved', () => spinStarved(400));
    hog.on('exit', () => setTimeout(done, 200));
  }, 100),
);
