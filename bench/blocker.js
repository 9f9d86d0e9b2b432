// Latency/accuracy target for `cargo xtask bench`:
// `node blocker.js MS,MS,... GAP_MS` prints `ready`, waits for a line on stdin,
// then blocks the loop for each MS in turn (GAP_MS apart) and prints
// `block i=N start_ns=.. end_ns=.. ms=.. eld_max_ms=..`: its own hrtime around
// the block, and the max of monitorEventLoopDelay({resolution: 10}) over the
// gap before the block and the block itself.
'use strict';
const { monitorEventLoopDelay } = require('perf_hooks');
const durations = process.argv[2].split(',').map(Number);
const gap = Number(process.argv[3]);
const eld = monitorEventLoopDelay({ resolution: 10 });
eld.enable();

let i = 0;
function block() {
  if (i >= durations.length) {
    console.log('done');
    process.exit(0);
  }
  const idx = i++;
  const start = process.hrtime.bigint();
  const end = start + BigInt(Math.round(durations[idx] * 1e6));
  let x = 0;
  let now;
  while ((now = process.hrtime.bigint()) < end) x += Math.sqrt(x + 1);
  const ms = Number(now - start) / 1e6;
  // Read the histogram once its timer has fired after the block.
  setTimeout(() => {
    console.log(`block i=${idx} start_ns=${start} end_ns=${now} ms=${ms} eld_max_ms=${eld.max / 1e6}`);
    gapThenBlock();
  }, 25);
}

// The histogram is reset at the start of the gap, not right before the block:
// its timer only records a delay once it has ticked after a reset.
function gapThenBlock() {
  eld.reset();
  setTimeout(block, gap);
}

process.stdin.once('data', () => {
  process.stdin.pause();
  gapThenBlock();
});
console.log('ready');
