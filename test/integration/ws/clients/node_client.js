// node_client.js - a /ws client on Node's `ws` package (npm), driven by
// test_ws_real_clients.py.
//
//   NODE_PATH=<dir with ws> node node_client.js '<json config>'
//
// It writes one JSON object a line on stdout: {"event": "ready", ...} once
// it is subscribed (the test then publishes), and {"event": "result", ...}
// at the end, with everything it saw. It asserts nothing itself: the test
// compares what the client saw with what was published.
//
// config: {url, mode, device, n, pad, idle_ms, size, origin, ping_payload,
//          timeout_ms, telemetry_ms}
//   mode "main": subscribe to `pad` made-up devices in one big message
//     (a 16-bit-length frame from a real client), then to `device`; wait
//     for `n` telemetry messages; a JSON ping; a protocol ping with a
//     payload; stay quiet for idle_ms (server heartbeat pings are answered
//     by ws itself); close with 1000 and report the code the server's close
//     frame carried.
//   mode "toolarge": send one text message of `size` bytes and report the
//     close code the server sent.
'use strict';

const WebSocket = require('ws');

const cfg = JSON.parse(process.argv[2]);
const out = {
  event: 'result',
  ws_version: require('ws/package.json').version,
  node_version: process.version,
  opened: false,
  upgrade_status: null,
  upgrade_headers: null,
  unexpected_response: null,
  extensions: null,
  protocol: null,
  padded: null,
  subscribed: null,
  telemetry: [],
  json_pong: false,
  pong_payload: null,
  server_pings: 0,
  close_code: null,
  close_reason: null,
  errors: [],
  steps: [],
  other: [],
};

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n');
}

let finished = false;
function finish() {
  if (finished) return;
  finished = true;
  emit(out);
  // let stdout drain, then leave even if a socket is still around
  setTimeout(() => process.exit(0), 50);
}

const deadline = setTimeout(() => {
  out.errors.push('client timeout after ' + cfg.timeout_ms + ' ms at step ' +
                  (out.steps[out.steps.length - 1] || 'connect'));
  try { ws.terminate(); } catch (e) { /* already gone */ }
  finish();
}, cfg.timeout_ms || 20000);

const opts = {};
if (cfg.origin) opts.origin = cfg.origin;
const ws = new WebSocket(cfg.url, opts);

ws.on('upgrade', (res) => {
  out.upgrade_status = res.statusCode;
  out.upgrade_headers = res.headers;
});
ws.on('unexpected-response', (req, res) => {
  let body = '';
  res.on('data', (d) => { body += d; });
  res.on('end', () => {
    out.unexpected_response = { status: res.statusCode, body: body };
    clearTimeout(deadline);
    finish();
  });
});
ws.on('error', (e) => { out.errors.push(String(e && e.message || e)); });
ws.on('ping', () => { out.server_pings++; });
ws.on('close', (code, reason) => {
  out.close_code = code;
  out.close_reason = reason.toString();
  clearTimeout(deadline);
  finish();
});

// JSON replies other than telemetry are handed to whoever waits for them
const waiters = [];
function waitFor(type, ms) {
  return new Promise((resolve, reject) => {
    const w = { type: type, resolve: resolve };
    w.timer = setTimeout(() => {
      waiters.splice(waiters.indexOf(w), 1);
      reject(new Error('no ' + type + ' within ' + ms + ' ms'));
    }, ms);
    waiters.push(w);
  });
}

let telemetryDone = null;
ws.on('message', (data, isBinary) => {
  if (isBinary) {
    out.errors.push('binary message from the server');
    return;
  }
  let m;
  try {
    m = JSON.parse(data.toString('utf8'));
  } catch (e) {
    out.errors.push('not JSON: ' + data.toString('utf8').slice(0, 200));
    return;
  }
  if (m.type === 'telemetry') {
    out.telemetry.push(m);
    if (telemetryDone && out.telemetry.length >= cfg.n) telemetryDone();
    return;
  }
  const i = waiters.findIndex((w) => w.type === m.type || m.type === 'error');
  if (i < 0) {
    out.other.push(m);
    return;
  }
  const w = waiters.splice(i, 1)[0];
  clearTimeout(w.timer);
  w.resolve(m);
});

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

async function request(obj, type, ms) {
  const p = waitFor(type, ms || 5000);
  ws.send(JSON.stringify(obj));
  return p;
}

async function mainMode() {
  out.steps.push('pad-subscribe');
  if (cfg.pad > 0) {
    const pad = [];
    for (let i = 0; i < cfg.pad; i++) {
      pad.push(cfg.device + '-pad-' + String(i).padStart(40, '0'));
    }
    const r = await request({ type: 'subscribe', devices: pad }, 'subscribed');
    out.padded = {
      sent_bytes: JSON.stringify({ type: 'subscribe', devices: pad }).length,
      reply: r.type,
      devices: Array.isArray(r.devices) ? r.devices.length : null,
      same: JSON.stringify(r.devices) === JSON.stringify(pad),
      error: r.type === 'error' ? r : null,
    };
  }
  out.steps.push('subscribe');
  const r = await request({ type: 'subscribe', devices: [cfg.device] },
                          'subscribed');
  out.subscribed = r;
  const got = new Promise((resolve) => { telemetryDone = resolve; });
  emit({ event: 'ready', subscribed: r });
  out.steps.push('telemetry');
  if (out.telemetry.length < cfg.n) {
    await Promise.race([got, sleep(cfg.telemetry_ms || 10000)]);
  }
  out.steps.push('json-ping');
  const pong = await request({ type: 'ping' }, 'pong');
  out.json_pong = pong.type === 'pong';
  out.steps.push('protocol-ping');
  const payload = cfg.ping_payload || ('node-ping-' + process.pid);
  const pp = new Promise((resolve) => ws.once('pong', (d) => resolve(d)));
  ws.ping(payload);
  out.pong_payload = (await Promise.race([pp, sleep(3000)]) || '').toString();
  if (cfg.idle_ms) {
    out.steps.push('idle');
    await sleep(cfg.idle_ms);
  }
  out.steps.push('close');
  ws.close(1000, 'node done');
}

ws.on('open', () => {
  out.opened = true;
  out.extensions = ws.extensions;
  out.protocol = ws.protocol;
  const run = cfg.mode === 'toolarge'
    ? async () => {
        out.steps.push('send-large');
        ws.send('{"type":"ping","pad":"' + 'x'.repeat(cfg.size) + '"}');
      }
    : mainMode;
  run().catch((e) => {
    out.errors.push('step ' + out.steps[out.steps.length - 1] + ': ' + e.message);
    try { ws.close(1000, 'node failed'); } catch (e2) { /* gone */ }
  });
});
