'use strict';
// A full mark-compact of a large live heap, forced with gc() (--expose-gc):
// the loop is busy in V8's garbage collector. See protocol.js.
const { measure, waitForGo, done } = require('./protocol');

// ~3M small live objects: a full collection takes hundreds of ms.
const live = [];
for (let i = 0; i < 3_000_000; i++) live.push({ i, s: 'x' + (i % 1000) });

function collectEverything() {
  global.gc();
}

waitForGo(() =>
  setTimeout(() => {
    measure('collectEverything', collectEverything);
    setTimeout(() => done({ live: live.length }), 300);
  }, 100),
);
