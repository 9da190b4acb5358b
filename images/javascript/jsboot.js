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
delete process.env.ATHENA_PARAMS_FILE;
delete process.env.ATHENA_OUTPUT_FILE;
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
const request = raw ? JSON.parse(raw) : {};
globalThis.parameters = request.parameters || {};

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
}

if (request.guard) installGuard(request.guard);
else {
  try { fs.closeSync(4); } catch (_) { /* already closed, or no runner */ }
}
