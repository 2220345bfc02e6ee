'use strict';
// msb REPL driver for Node.js: runs *inside* the sandbox (no dependencies, Node >= 16).
//
// The host starts `node <this file>` and speaks JSON lines with it, exactly like the Python
// driver:
//   host -> driver (stdin):  {"type":"run","id":N,"code":"...","max_output":BYTES,"interruptible":B}
//   driver -> host (stdout): {"type":"ready",...} once, then per run
//                            {"type":"out","id":N,"stream":"stdout"|"stderr","data":"text"}...
//                            {"type":"done","id":N,"status":"success"|"error"}
//
// Node cannot dup2, so the process the host started (the "supervisor") only sets up fds: it
// starts the interpreter as a child whose fds 1 and 2 are socket pairs (console.log,
// process.stdout and child processes are all captured), whose fd 3 is the host's stdin and fd 4
// the host's stdout; then it idles until the child exits, and exits the same way. In the child
// the main thread runs user code and a worker thread ("pump") reads the other ends of fds 1/2
// and writes all protocol messages. At the end of a run the main thread writes a secret marker
// through fds 1 and 2; the pump sends "done" only once both markers went by, so all of a run's
// output arrives before its "done". The host signals the whole process group; the supervisor
// ignores SIGINT and the interpreter turns it into an "interrupted" error.

const wt = require('worker_threads');

const MAX_TEXT = 16 * 1024; // characters per "out" message: well under the host's line limit
const EXIT_FLUSH_MS = 500; // process.exit() waits this long for the pump to forward the output
const MARKER_WAIT_MS = 2000; // only reached when user code broke its stdout or stderr
// Shared Int32Array slots between the interpreter's main thread and its pump.
const RUN_ID = 0; // the run output belongs to
const BUDGET = 1; // output bytes the run may still send
const ENDS = 2; // runs ended: markers written by the main thread
const DONE_ID = 3; // the run of the last end (0: none, e.g. at exit)
const DONE_OK = 4; // 1 if that run succeeded
const FLUSHED = 5; // ends the pump has fully forwarded

// ---------------------------------------------------------------------------- supervisor

function socketPair(net, server, path) {
  // -> Promise<[writeEnd, readEnd]>, both connected; connect one at a time so they pair up.
  return new Promise((resolve, reject) => {
    let client = null;
    let accepted = null;
    const settle = () => client && client.connecting === false && accepted && resolve([client, accepted]);
    server.once('connection', (socket) => {
      accepted = socket;
      settle();
    });
    client = net.connect(path, settle);
    client.on('error', reject);
  });
}

function interpreterFlags() {
  // Sparkplug turns every new cell into machine code that an emulated CPU (QEMU TCG) must
  // translate again: ~1 ms per call. Ignition and TurboFan still run. (V8 >= 9.1 has the flag.)
  const [major, minor] = process.versions.v8.split('.').map(Number);
  const sparkplug = major > 9 || (major === 9 && minor >= 1) ? ['--no-sparkplug'] : [];
  return ['--expose-internals', ...sparkplug];
}

async function supervise() {
  const net = require('net');
  const os = require('os');
  const crypto = require('crypto');
  const { spawn } = require('child_process');
  process.on('SIGINT', () => {}); // the interpreter gets the group's SIGINT itself
  const path = '\0msb-repl-' + process.pid + '-' + crypto.randomBytes(8).toString('hex');
  const server = net.createServer({ pauseOnConnect: true });
  await new Promise((resolve) => server.listen(path, resolve));
  const [outW, outR] = await socketPair(net, server, path);
  const [errW, errR] = await socketPair(net, server, path);
  server.close();
  const child = spawn(process.execPath, [...process.execArgv, ...interpreterFlags(), __filename, '--inner'], {
    stdio: ['ignore', outW, errW, 0, 1, outR, errR],
  });
  for (const socket of [outW, outR, errW, errR]) socket.destroy(); // closes only our copies
  child.on('exit', (code, signal) => process.exit(code !== null ? code : 128 + (os.constants.signals[signal] || 0)));
}

// ---------------------------------------------------------------------------- pump (worker)

function pump({ shared, marker }) {
  // Forwards fds 5/6 (the far ends of the interpreter's fds 1/2) as "out" messages; after the
  // markers of a run's end went by on both, sends its "done".
  const net = require('net');
  const fs = require('fs');
  const { StringDecoder } = require('string_decoder');
  const slots = new Int32Array(shared);
  const mark = Buffer.from(marker);
  const nap = new Int32Array(new SharedArrayBuffer(4));
  function write(text) {
    // fd 4 is the host's pipe: write all of it, in order, from this thread only
    let buf = Buffer.from(text);
    while (buf.length) {
      try {
        buf = buf.subarray(fs.writeSync(4, buf));
      } catch (e) {
        if (e.code !== 'EAGAIN') throw e;
        Atomics.wait(nap, 0, 0, 1); // the host is behind: back off 1 ms
      }
    }
  }
  const streams = [
    { name: 'stdout', fd: 5, decoder: new StringDecoder('utf8'), held: Buffer.alloc(0), ends: 0 },
    { name: 'stderr', fd: 6, decoder: new StringDecoder('utf8'), held: Buffer.alloc(0), ends: 0 },
  ];
  let pending = '';

  function emitText(stream, text) {
    const id = Atomics.load(slots, RUN_ID);
    for (let i = 0; i < text.length; i += MAX_TEXT) {
      pending += JSON.stringify({ type: 'out', id, stream: stream.name, data: text.slice(i, i + MAX_TEXT) }) + '\n';
    }
  }

  function emit(stream, bytes) {
    if (!bytes.length) return;
    if (Atomics.sub(slots, BUDGET, bytes.length) < 0) return; // over budget: drop (one chunk crosses)
    emitText(stream, stream.decoder.write(bytes));
  }

  function heldBack(buf) {
    // Bytes at the end that may be the start of a marker split across reads.
    for (let n = Math.min(buf.length, mark.length - 1); n > 0; n--) {
      if (buf.subarray(buf.length - n).equals(mark.subarray(0, n))) return n;
    }
    return 0;
  }

  function feed(stream, chunk) {
    let buf = stream.held.length ? Buffer.concat([stream.held, chunk]) : chunk;
    let i;
    while ((i = buf.indexOf(mark)) >= 0) {
      emit(stream, buf.subarray(0, i));
      emitText(stream, stream.decoder.end());
      stream.ends += 1;
      buf = buf.subarray(i + mark.length);
    }
    const keep = heldBack(buf);
    emit(stream, buf.subarray(0, buf.length - keep));
    stream.held = Buffer.from(buf.subarray(buf.length - keep));
    settle();
  }

  let fallback = null;

  function settle() {
    const open = streams.filter((s) => !s.closed);
    const ended = open.length ? Math.min(...open.map((s) => s.ends)) : Atomics.load(slots, ENDS);
    if (open.some((s) => s.ends > ended)) {
      // one marker is here, the other on its way: wait, then send the output with "done" in one
      // write -- or, if user code broke that stream, give up on its marker after a while
      if (!fallback) fallback = setTimeout(() => {
        fallback = null;
        for (const s of open) s.ends = Math.max(...open.map((o) => o.ends));
        settle();
      }, MARKER_WAIT_MS);
      return;
    }
    if (fallback) clearTimeout(fallback);
    fallback = null;
    if (ended > Atomics.load(slots, FLUSHED) && ended === Atomics.load(slots, ENDS)) {
      const id = Atomics.load(slots, DONE_ID);
      if (id) pending += JSON.stringify({ type: 'done', id, status: Atomics.load(slots, DONE_OK) ? 'success' : 'error' }) + '\n';
    }
    if (pending) write(pending);
    pending = '';
    if (ended > Atomics.load(slots, FLUSHED)) {
      Atomics.store(slots, FLUSHED, ended);
      Atomics.notify(slots, FLUSHED);
    }
  }

  for (const stream of streams) {
    const socket = new net.Socket({ fd: stream.fd, readable: true, writable: false });
    socket.on('data', (chunk) => feed(stream, chunk));
    socket.on('error', () => {});
    socket.on('end', () => {
      stream.closed = true; // every writer closed it: stop expecting markers there
      settle();
    });
  }
  write(JSON.stringify({ type: 'ready', pid: process.pid, version: process.version }) + '\n');
}

// ---------------------------------------------------------------------------- interpreter

function trimStack(stack) {
  // Drop the frames below the user's code: node's vm machinery and this driver.
  const lines = stack.split('\n');
  const cut = lines.findIndex((l) => /^\s+at /.test(l) && (l.includes('node:vm') || l.includes(__filename)));
  return (cut < 0 ? lines : lines.slice(0, cut)).join('\n');
}

function makeContext(vm, path) {
  // A fresh global like node's own REPL: the JS builtins are the context's own, node's globals
  // (process, Buffer, console, timers, fetch, ...) are copied in, require resolves from the cwd.
  const { createRequire } = require('module');
  const context = vm.createContext({});
  const own = new Set(vm.runInContext('Object.getOwnPropertyNames(globalThis)', context));
  for (const name of Object.getOwnPropertyNames(globalThis)) {
    // V8 gives every context a `console` that prints nowhere: take node's instead
    if ((own.has(name) && name !== 'console') || name === 'global') continue;
    Object.defineProperty(context, name, Object.getOwnPropertyDescriptor(globalThis, name));
  }
  const filename = path.join(process.cwd(), '[repl]');
  context.global = vm.runInContext('globalThis', context);
  context.require = createRequire(filename);
  context.module = { exports: {}, filename, id: '[repl]' };
  context.exports = context.module.exports;
  context.__filename = filename;
  context.__dirname = process.cwd();
  return context;
}

function lines(onLine) {
  let buf = '';
  return (chunk) => {
    buf += chunk;
    let i;
    while ((i = buf.indexOf('\n')) >= 0) {
      const line = buf.slice(0, i);
      buf = buf.slice(i + 1);
      if (line) onLine(line);
    }
  };
}

function parseRequest(line) {
  try {
    const req = JSON.parse(line);
    return req && req.type === 'run' && typeof req.id === 'number' && typeof req.code === 'string' ? req : null;
  } catch (e) {
    return null;
  }
}

function interpret() {
  const vm = require('vm');
  const util = require('util');
  const net = require('net');
  const path = require('path');
  const crypto = require('crypto');
  const shared = new SharedArrayBuffer(8 * 4);
  const slots = new Int32Array(shared);
  const marker = '\u0000msb-' + crypto.randomBytes(12).toString('hex') + '\u0000';
  const writeOut = process.stdout.write.bind(process.stdout); // user code may replace .write
  const writeErr = process.stderr.write.bind(process.stderr);
  const context = makeContext(vm, path);
  let interruptAwait = null;
  let count = 0;

  const hasStack = (e) => e !== null && typeof e === 'object' && typeof e.stack === 'string';
  const describe = (e) => (hasStack(e) ? trimStack(e.stack) : util.inspect(e));
  process.on('SIGINT', () => {
    if (interruptAwait) interruptAwait(new Error('Script execution interrupted.'));
  });
  process.on('uncaughtException', (e) => writeErr('Uncaught ' + describe(e) + '\n'));
  process.stdout.on('error', () => {}); // a broken stdout must not loop through uncaughtException
  process.stderr.on('error', () => {});
  process.on('unhandledRejection', (e) => writeErr('Uncaught (in promise) ' + describe(e) + '\n'));

  function endRun(id, ok, out = '') {
    // Tell the pump how the run ended, then send the markers through both streams (after
    // `out`, in the same write).
    Atomics.store(slots, DONE_ID, id);
    Atomics.store(slots, DONE_OK, ok ? 1 : 0);
    const ends = Atomics.add(slots, ENDS, 1) + 1;
    writeOut(out + marker);
    writeErr(marker);
    return ends;
  }

  process.on('exit', () => {
    // process.exit() in user code: give the pump a moment to forward what was written.
    const ends = endRun(0, false);
    const deadline = Date.now() + EXIT_FLUSH_MS;
    let flushed;
    while ((flushed = Atomics.load(slots, FLUSHED)) < ends && Date.now() < deadline) {
      Atomics.wait(slots, FLUSHED, flushed, deadline - Date.now());
    }
  });

  let topLevelAwait = null; // node's own REPL transform; internal, so optional
  try {
    topLevelAwait = require('internal/repl/await').processTopLevelAwait;
  } catch (e) {
    topLevelAwait = null;
  }

  function compile(code, filename) {
    // -> [script, wrapped]: a wrapped cell returns a promise of {value} (node REPL style)
    try {
      return [new vm.Script(code, { filename }), false];
    } catch (e) {
      if (!(e && e.name === 'SyntaxError' && /\bawait\b/.test(code))) throw e;
      const wrapped = topLevelAwait ? topLevelAwait(code) : null;
      if (wrapped !== null) return [new vm.Script(wrapped, { filename }), true];
      // no transform available: an async function (its declarations stay local to the cell)
      return [new vm.Script('(async () => {\n' + code + '\n})()', { filename, lineOffset: -1 }), false];
    }
  }

  function awaitInterruptibly(promise) {
    return new Promise((resolve, reject) => {
      interruptAwait = reject;
      promise.then(resolve, reject);
    }).finally(() => {
      interruptAwait = null;
    });
  }

  async function evaluate(req) {
    count += 1;
    const [script, wrapped] = compile(req.code, 'REPL' + count);
    // breakOnSigint starts a watchdog thread per call: only when the host may interrupt
    const value = script.runInContext(context, { breakOnSigint: req.interruptible !== false, displayErrors: false });
    const result = util.types.isPromise(value) ? await awaitInterruptibly(value) : value;
    return wrapped ? result && result.value : result;
  }

  async function runCell(req) {
    Atomics.store(slots, RUN_ID, req.id);
    Atomics.store(slots, BUDGET, Math.min(typeof req.max_output === 'number' ? req.max_output : 8 << 20, 2 ** 30));
    let ok = true;
    let echo = '';
    try {
      const value = await evaluate(req);
      if (value !== undefined) echo = util.inspect(value) + '\n';
    } catch (e) {
      ok = false;
      writeErr((hasStack(e) ? '' : 'Uncaught ') + describe(e) + '\n');
    }
    endRun(req.id, ok, echo);
  }

  let queue = Promise.resolve();
  const requests = new net.Socket({ fd: 3, readable: true, writable: false });
  requests.setEncoding('utf8');
  requests.on('data', lines((line) => {
    const req = parseRequest(line);
    if (req) queue = queue.then(() => runCell(req));
  }));
  requests.on('end', () => process.exit(0));
  requests.on('error', () => process.exit(1));
  new wt.Worker(__filename, { workerData: { shared, marker } }).unref();
}

if (!wt.isMainThread) pump(wt.workerData);
else if (process.argv[2] === '--inner') interpret();
else supervise();
