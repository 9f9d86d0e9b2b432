'use strict';
// The Node process of the systemd guest's check (vm/systemd/check.sh): blocks
// its loop for BLOCK_MS every PERIOD_MS in vmSystemdBlock, calling stat(2) in
// a loop so the episode's stacks have kernel frames under a JavaScript one.
// Times are the script's own (Date.now), not the emulated CPU's speed.
const fs = require('fs');
const BLOCK_MS = 400;
const PERIOD_MS = 1500;

function vmSystemdBlock(ms) {
  const until = Date.now() + ms;
  let calls = 0;
  while (Date.now() < until) {
    fs.statSync('/');
    calls++;
  }
  return calls;
}

setInterval(() => {
  const calls = vmSystemdBlock(BLOCK_MS);
  process.stdout.write(JSON.stringify({ block: 'vmSystemdBlock', calls }) + '\n');
}, PERIOD_MS);
process.stdout.write(JSON.stringify({ script: 'ready', pid: process.pid }) + '\n');
