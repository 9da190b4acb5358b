'use strict';
// Bootstrap of the JavaScript sandbox, preloaded with --require before /workspace/main.js.
// The runner starts node before a request arrives, so the runtime is already loaded; this blocks
// on fd 3 until the parameters (JSON) arrive and exposes them as the global `parameters`.
const fs = require('fs');

// Outside a container (srt, inprocess) ATHENA_PARAMS_FILE names a file to read instead.
const paramsFile = process.env.ATHENA_PARAMS_FILE;
delete process.env.ATHENA_PARAMS_FILE;
let raw = '';
if (paramsFile) {
  raw = fs.readFileSync(paramsFile, 'utf8');
} else {
  try {
    raw = fs.readFileSync(3, 'utf8');
  } finally {
    for (const fd of [3, 4]) {
      try { fs.closeSync(fd); } catch (_) { /* already closed */ }
    }
  }
}
globalThis.parameters = raw ? JSON.parse(raw) : {};
