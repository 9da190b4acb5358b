'use strict';
// Bootstrap of the JavaScript sandbox, preloaded with --require before /workspace/main.js.
// The runner starts node before a request arrives, so the runtime is already loaded; this blocks
// on fd 3 until the parameters (JSON) arrive and exposes them as the global `parameters`.
const fs = require('fs');

let raw = '';
try {
  raw = fs.readFileSync(3, 'utf8');
} finally {
  for (const fd of [3, 4]) {
    try { fs.closeSync(fd); } catch (_) { /* already closed */ }
  }
}
globalThis.parameters = raw ? JSON.parse(raw) : {};
