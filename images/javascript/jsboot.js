'use strict';
// Bootstrap of the JavaScript sandbox, preloaded with --require before /workspace/main.js.
// The runner starts node before a request arrives, so the runtime is already loaded; this blocks
// on fd 3 until the request arrives: {"parameters": {...}, "guard": {...} or null}. The
// parameters become the global `parameters`. With a guard (the policy enforces validation) the
// run-time policy layer is installed before the code runs: every require() and import() of a
// forbidden module is refused at the loader, whatever name or alias the code reached it by, and
// process.binding, process._linkedBinding and process.dlopen are closed. Each refusal throws
// an Error with code ERR_ACCESS_DENIED in the code and is reported as a {"policy": ...} line on
// fd 4 (or ATHENA_OUTPUT_FILE).
const fs = require('fs');
const path = require('path');
const vm = require('vm');
const Module = require('module');

// Outside a container (srt, inprocess) ATHENA_PARAMS_FILE names a file to read instead.
const paramsFile = process.env.ATHENA_PARAMS_FILE;
const outputFile = process.env.ATHENA_OUTPUT_FILE;
const session = process.env.ATHENA_SESSION === '1';
delete process.env.ATHENA_PARAMS_FILE;
delete process.env.ATHENA_OUTPUT_FILE;
delete process.env.ATHENA_SESSION;

function readRequest() {
  let raw = '';
  if (paramsFile) {
    raw = fs.readFileSync(paramsFile, 'utf8');
  } else {
    try {
      raw = fs.readFileSync(3, 'utf8');
    } finally {
      try { fs.closeSync(3); } catch (_) { /* already closed */ }
    }
  }
  return raw ? JSON.parse(raw) : {};
}

const MAX_REPORTED = 20;

function reportChannel() {
  if (outputFile) {
    try { return fs.openSync(outputFile, 'a', 0o600); } catch (_) { return -1; }
  }
  return paramsFile ? -1 : 4;
}

function installGuard(guard) {
  // Everything the guard calls is taken now, before the code runs: code that replaces a
  // built-in (Set.prototype.has, JSON.stringify, fs.writeSync, ...) cannot switch it off.
  const apply = Reflect.apply;
  const { writeSync } = fs;
  const stringify = JSON.stringify;
  const toText = String;
  const { slice, indexOf, startsWith } = String.prototype;
  const hasOwn = Object.prototype.hasOwnProperty;
  const forbidden = Object.create(null);
  for (const name of guard.modules || []) forbidden[name] = true;
  const policy = toText(guard.policy || 'the policy');
  const channel = reportChannel();
  let refused = 0;

  function refuse(kind, message, detail) {
    refused += 1;
    if (refused <= MAX_REPORTED && channel >= 0) {
      try {  // a fresh line first: bytes the code wrote there cannot swallow the report
        apply(writeSync, fs, [channel, '\n' + stringify({ policy: { kind, message, detail } }) + '\n']);
      } catch (_) { /* the code closed the channel: the refusal still stands */ }
    }
    const error = new Error(`${message} (sandbox policy ${policy})`);
    error.code = 'ERR_ACCESS_DENIED';
    throw error;
  }

  function checkModule(specifier) {
    let name = toText(specifier);
    if (apply(startsWith, name, ['node:'])) name = apply(slice, name, [5]);
    const slash = apply(indexOf, name, ['/']);
    const top = slash < 0 ? name : apply(slice, name, [0, slash]);
    if (apply(hasOwn, forbidden, [name]) || apply(hasOwn, forbidden, [top])) {
      refuse('import', `import of '${name}' refused`, { module: name });
    }
  }

  const load = Module._load;
  function guardedLoad(specifier, parent, isMain) {
    checkModule(specifier);
    return apply(load, this, [specifier, parent, isMain]);
  }
  Object.defineProperty(Module, '_load', { value: guardedLoad, writable: false, configurable: false });

  // import() does not go through Module._load: each module the code loads is compiled here with
  // a dynamic-import hook that checks the name first.
  async function guardedImport(specifier) {
    checkModule(specifier);
    return import(specifier);
  }
  const { compileFunction } = vm;
  const { createRequire } = Module;
  const { dirname } = path;
  function guardedCompile(content, filename) {
    const wrapper = compileFunction(
      content, ['exports', 'require', 'module', '__filename', '__dirname'],
      { filename, importModuleDynamically: guardedImport });
    const localRequire = createRequire(filename);
    return apply(wrapper, this.exports,
      [this.exports, localRequire, this, filename, dirname(filename)]);
  }
  Object.defineProperty(Module.prototype, '_compile',
    { value: guardedCompile, writable: false, configurable: false });

  for (const name of ['binding', '_linkedBinding', 'dlopen']) {
    const closed = () => refuse('binding', `process.${name} refused`, { name });
    Object.defineProperty(process, name, { value: closed, writable: false, configurable: false });
  }
  return guardedImport;
}

// A session (ATHENA_SESSION=1; this file is then the main module, the code file its argument):
// calls arrive on fd 3 as "<length>\n<request>", each call's code is in the code file and runs
// in this one global scope (its `var`, `let`, `const` and functions stay for the next call);
// "<status>\n" goes to fd 5 when it is done (when the promise it returns, if any, settles). At
// the timeout the runner's SIGINT interrupts it (an Error in the code); the session goes on.
// Errors thrown later by its timers are printed to stderr and do not end the session.
function serveSession(codePath) {
  globalThis.require = Module.createRequire(codePath);
  let guardedImport = null;
  let count = 0;
  let pending = Buffer.alloc(0);
  let busy = false;
  let interrupt = null;
  const queue = [];
  // The code's frames only: the bootstrap's and node's own say nothing about the code.
  const report = (error) => {
    let text = `Uncaught ${String(error)}`;
    try {
      if (error && typeof error.stack === 'string') {
        text = error.stack.split('\n')
          .filter((line) => !/^\s+at .*(node:|jsboot\.js)/.test(line)).join('\n');
      }
    } catch (_) { /* a stack that throws when read */ }
    try { fs.writeSync(2, `${text}\n`); } catch (_) { /* stderr closed by the code */ }
  };
  process.on('uncaughtException', report);
  process.on('unhandledRejection', report);
  process.on('SIGINT', () => { if (interrupt) interrupt(new Error('Script execution interrupted.')); });

  async function runCall(request) {
    if (!guardedImport && request.guard) guardedImport = installGuard(request.guard);
    globalThis.parameters = request.parameters || {};
    count += 1;
    let status = 0;
    try {
      const source = fs.readFileSync(codePath, 'utf8');
      const result = vm.runInThisContext(source, {
        filename: `cell-${count}.js`,
        breakOnSigint: true,
        importModuleDynamically: guardedImport || ((specifier) => import(specifier)),
      });
      if (result && typeof result.then === 'function') {
        await new Promise((resolve, reject) => { interrupt = reject; result.then(resolve, reject); });
      }
    } catch (error) {
      report(error);
      status = 1;
    }
    interrupt = null;
    try { fs.writeSync(5, `${status}\n`); } catch (_) { process.exit(0); }
  }

  async function drain() {
    if (busy) return;
    busy = true;
    while (queue.length) await runCall(queue.shift());
    busy = false;
  }

  const requests = fs.createReadStream(null, { fd: 3, highWaterMark: 65536 });
  requests.on('data', (chunk) => {
    pending = Buffer.concat([pending, chunk]);
    for (;;) {
      const newline = pending.indexOf(10);
      if (newline < 0) break;
      const size = Number(pending.subarray(0, newline).toString('latin1'));
      if (pending.length < newline + 1 + size) break;
      const body = pending.subarray(newline + 1, newline + 1 + size).toString('utf8');
      pending = pending.subarray(newline + 1 + size);
      queue.push(body ? JSON.parse(body) : {});
    }
    drain();
  });
  requests.on('end', () => process.exit(0));
  requests.on('error', () => process.exit(0));
}

if (session) {
  serveSession(process.argv[2] || '/workspace/main.js');
} else {
  const request = readRequest();
  globalThis.parameters = request.parameters || {};
  if (request.guard) installGuard(request.guard);
  else {
    try { fs.closeSync(4); } catch (_) { /* already closed, or no runner */ }
  }
}
