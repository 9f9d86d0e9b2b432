// HTTP target for `cargo xtask bench` (overhead): `node server.js http|express`.
// Listens on an ephemeral 127.0.0.1 port and prints `listening PORT`.
'use strict';
const kind = process.argv[2] || 'http';

// A little real work per request: build and serialize a small JSON body.
function body(url) {
  const items = [];
  for (let i = 0; i < 16; i++) items.push({ id: i, name: `item-${i}`, path: url });
  return JSON.stringify({ ok: true, t: Date.now(), items });
}

let server;
const ready = () => console.log(`listening ${server.address().port}`);
if (kind === 'express') {
  const express = require('express');
  const app = express();
  app.get('/', (req, res) => res.type('json').send(body(req.url)));
  server = app.listen(0, '127.0.0.1', ready);
} else if (kind === 'http') {
  server = require('http').createServer((req, res) => {
    res.setHeader('content-type', 'application/json');
    res.end(body(req.url));
  });
  server.listen(0, '127.0.0.1', ready);
} else {
  console.error(`unknown server kind ${kind}: expected http or express`);
  process.exit(2);
}
// A clean exit so --cpu-prof writes its profile.
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => process.exit(0));
