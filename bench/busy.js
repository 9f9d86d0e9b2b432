// Agent-cost target for `cargo xtask bench`: short busy callbacks
// (0.5 ms every 10 ms) and an occasional 60 ms block (every 2 s).
'use strict';
function burn(ms) {
  const end = process.hrtime.bigint() + BigInt(Math.round(ms * 1e6));
  let x = 0;
  while (process.hrtime.bigint() < end) x += Math.sqrt(x + 1);
  return x;
}
// BUSY_SCALE=N stretches both intervals N times (for 100 processes on 2 CPUs).
const scale = Number(process.env.BUSY_SCALE || 1);
setInterval(() => burn(0.5), 10 * scale);
setInterval(() => burn(60), 2000 * scale);
console.log('ready');
