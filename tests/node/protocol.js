'use strict';
// What every test script shares with the Rust harness (tests/src/run.rs):
// JSON lines on stdout, {"script":"ready"} once prepared, then nothing runs
// until a line arrives on stdin (sent once loopbpf's probes are attached),
// and {"script":"done","at_ns":…} last. Times are process.hrtime.bigint()
// nanoseconds (CLOCK_MONOTONIC, the clock loopbpf reports in) as strings.
// To run one alone:
//   echo go | node --perf-basic-prof-only-functions --interpreted-frames-native-stack blocks.js

// How many times slower than a normal machine this one runs (an emulated
// guest of `cargo xtask vm-test` sets it): idle gaps between blocks are
// stretched by it, so that slow loop work around a block never runs into the
// next timer. Blocks are timed, and scaled only by the measured speed
// factor in the tests that ask for it (blockMs below).
const TIME_SCALE = Number(process.env.LOOPBPF_TEST_TIME_SCALE || 1);

function idleMs(ms) {
  return ms * TIME_SCALE;
}

// Set by tests that scale loopbpf's threshold by the machine's measured
// speed factor (Scenario::speed_scaled): block lengths scale with it, so
// blocks stay over the threshold. 1 elsewhere.
const SPEED_SCALE = Number(process.env.LOOPBPF_TEST_SPEED_SCALE || 1);

function blockMs(ms) {
  return ms * SPEED_SCALE;
}

function now() {
  return process.hrtime.bigint();
}

function report(line) {
  // Synchronous for pipes on Linux: a line is out before the next one starts.
  process.stdout.write(JSON.stringify(line) + '\n');
}

// Runs `fn` and reports {name, start_ns, end_ns, ms} measured tightly around it.
function measure(name, fn) {
  const start = now();
  fn();
  const end = now();
  report({ block: name, start_ns: start.toString(), end_ns: end.toString(), ms: Number(end - start) / 1e6 });
}

function waitForGo(start) {
  report({ script: 'ready' });
  process.stdin.once('data', () => {
    // Nothing else may keep the process alive: it must exit on its own.
    process.stdin.destroy();
    start();
  });
}

// The script's last line, stamped: anything after it is process exit.
function done(extra) {
  report({ script: 'done', at_ns: now().toString(), ...extra });
}

module.exports = { now, report, measure, waitForGo, done, idleMs, blockMs };
