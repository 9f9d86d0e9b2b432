'use strict';
// Blocks in the callback that wakes the loop from the poll it was asleep in
// while loopbpf attached. fexit probes never see that poll return (it was
// entered before they existed), so this checks loopbpf measures the
// iteration anyway. See protocol.js for the stdin/stdout protocol.
const { now, measure, waitForGo, done, idleMs } = require('./protocol');

const IDLE_MS = idleMs(300);

// Time-based, not work-based: as long on an emulated CPU as on a fast one.
function blockOnWake(ms) {
  const until = now() + BigInt(ms * 1e6);
  let spins = 0;
  while (now() < until) spins++;
  return spins;
}

waitForGo(() => {
  measure('blockOnWake', () => blockOnWake(200));
  setTimeout(done, IDLE_MS);
});
