'use strict';
// The speed calibration of `cargo xtask vm-test`: a fixed amount of what
// slows the tests' loops on a slow machine (Node's start-up and cold code,
// JIT tiering, small allocations and GC, event-loop turns), then the wall
// time since the process started and the CPU time it used, in ms. xtask
// runs it on the host (the CPU time: other builds there must not make the
// guest look fast) and in the guest (the wall time, which its tests see);
// the ratio is the guest's LOOPBPF_TEST_SPEED_FACTOR (tests/src/lib.rs).
const { performance } = require('perf_hooks');

let turns = 0;
let last = null;
function turn() {
  for (let i = 0; i < 500; i++) last = JSON.parse(JSON.stringify({ i, s: 'x' + i, a: [i, last && last.i] }));
  if (++turns < 20) setImmediate(turn);
  else {
    const cpu = process.cpuUsage();
    process.stdout.write(`${performance.now().toFixed(1)} ${((cpu.user + cpu.system) / 1000).toFixed(1)}\n`);
  }
}
setImmediate(turn);
