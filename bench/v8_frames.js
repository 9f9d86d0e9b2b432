'use strict';
// `cargo xtask bench` (v8 frames): blocks the loop in JavaScript with many
// distinct functions on the stack, for the cost of naming JIT frames from
// V8's memory. Every 500 ms a 200 ms block calls through a chain of
// functions picked from FUNCTIONS distinct ones (each its own
// SharedFunctionInfo), more than the name cache holds, so it also evicts.
const FUNCTIONS = Number(process.env.LOOPBPF_BENCH_FUNCTIONS || 20000);
const DEPTH = 8;

const fns = [];
for (let i = 0; i < FUNCTIONS; i++) {
  // A separate script each: a distinct function to name.
  fns.push(new Function('next', 'n', `// f${i}\nlet x = ${i}; for (let j = 0; j < n; j++) x = (x * 31 + j) | 0; return next ? next(x) : x;`));
}

let pick = 0;
function chain(n) {
  let f = null;
  for (let d = 0; d < DEPTH; d++) {
    const g = fns[pick++ % FUNCTIONS];
    const next = f;
    f = (x) => g(next, n + (x & 1));
  }
  return f(0);
}

function block(ms) {
  const until = Date.now() + ms;
  let x = 0;
  while (Date.now() < until) x ^= chain(200);
  return x;
}

setInterval(() => block(200), 500);
console.log('ready');
