'use strict';
// Holds a large, touched heap until it exits, so tearing the process down
// takes longer than the threshold. That time comes after the event loop has
// ended: it is not an iteration. See protocol.js for the stdin/stdout protocol.
const { done, waitForGo } = require('./protocol');

const MB = 1024 * 1024;
const held = [];
for (let i = 0; i < 16; i++) held.push(Buffer.alloc(64 * MB, 1));

waitForGo(() => setTimeout(() => done({ held_mb: held.length * 64 }), 300));
