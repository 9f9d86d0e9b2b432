'use strict';
// One execSync between idle periods: the main thread runs a nested libuv loop
// of its own while it waits, which must not end the outer iteration's episode.
// See protocol.js for the stdin/stdout protocol.
const { execSync } = require('child_process');
const { measure, waitForGo, done, idleMs } = require('./protocol');

const IDLE_MS = idleMs(300);

function runChildSync() {
  execSync('sleep 0.3');
}

waitForGo(() =>
  setTimeout(() => {
    measure('runChildSync', runChildSync);
    setTimeout(done, IDLE_MS);
  }, IDLE_MS),
);
