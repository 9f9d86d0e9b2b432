// Agent-cost target for `cargo xtask bench`: short busy callbacks
// (0.5 ms every 10 ms) and an occasional 60 ms block (every 2 s).
'use strict';
function burn(ms) {
  const end = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
  let x = 0;
  while (process.hrtime.bigint() < end) x += Math.sqrt(x + 1);
  return x;
}
setInterval(() => burn(0.5), 10);
setInterval(() => burn(60), 2000);
console.log('ready');
