// Node's `ws` against pier, for tests/e2e/test_ws_node.py (run with NODE_PATH=/usr/share/nodejs).
//
//   node test_ws_node.js client ws://127.0.0.1:PORT   talks to pier http's /ws/echo and /ws/chat;
//                                                     prints "ok WHAT" or "FAIL WHAT" per check
//   node test_ws_node.js server                       a Node `ws` server for pier ws-client: prints
//                                                     "port N", then one JSON line per event
'use strict';
const WebSocket = require('ws');
const crypto = require('crypto');

let failures = 0;
function check(cond, what) {
    if (!cond)
        failures++;
    console.log((cond ? 'ok ' : 'FAIL ') + what);
}

// A client whose every event lands in a queue that next() takes from in order.
function open(url) {
    return new Promise((resolve, reject) => {
        const ws = new WebSocket(url, { maxPayload: 64 << 20 });
        const queue = [];
        let waiter = null;
        const push = (ev) => {
            if (waiter) {
                const w = waiter;
                waiter = null;
                w(ev);
            } else {
                queue.push(ev);
            }
        };
        ws.on('message', (data, isBinary) => push({ type: 'message', data: Buffer.from(data), isBinary }));
        ws.on('pong', (data) => push({ type: 'pong', data: Buffer.from(data) }));
        ws.on('close', (code, reason) => push({ type: 'close', code, reason: reason.toString() }));
        ws.on('error', (err) => push({ type: 'error', err: String(err) }));
        ws.next = (ms = 10000) => new Promise((res) => {
            if (queue.length)
                return res(queue.shift());
            const t = setTimeout(() => { waiter = null; res({ type: 'timeout' }); }, ms);
            waiter = (ev) => { clearTimeout(t); res(ev); };
        });
        ws.once('open', () => resolve(ws));
        ws.once('unexpected-response', (req, res) => reject(new Error('HTTP ' + res.statusCode)));
        ws.once('error', reject);
    });
}

async function expectMessage(ws, data, isBinary, what) {
    const ev = await ws.next();
    check(ev.type === 'message' && ev.isBinary === isBinary && Buffer.compare(ev.data, Buffer.from(data)) === 0,
          what + (ev.type === 'message' ? '' : ' (got ' + ev.type + ')'));
}

async function expectClose(ws, code, what) {
    let ev;
    do
        ev = await ws.next();
    while (ev.type === 'message' || ev.type === 'pong' || ev.type === 'error');
    check(ev.type === 'close' && ev.code === code, what + ' (got ' + ev.type + ' ' + ev.code + ')');
}

async function echo(base) {
    const ws = await open(base + '/ws/echo');
    ws.send('héllo €');
    await expectMessage(ws, 'héllo €', false, 'text echoed as text');
    const bin = crypto.randomBytes(300);
    ws.send(bin);
    await expectMessage(ws, bin, true, 'binary echoed as binary');
    ws.send('');
    await expectMessage(ws, '', false, 'an empty text message');
    // one message in three frames, the euro sign cut between two of them
    const euro = Buffer.from('€');
    ws.send(Buffer.concat([Buffer.from('frag'), euro.subarray(0, 1)]), { binary: false, fin: false });
    ws.send(euro.subarray(1), { binary: false, fin: false });
    ws.send(Buffer.from('mented'), { binary: false, fin: true });
    await expectMessage(ws, 'frag€mented', false, 'a fragmented message comes back whole');
    for (const n of [125, 126, 65535, 65536, 1 << 20]) {
        const big = crypto.randomBytes(n);
        ws.send(big);
        await expectMessage(ws, big, true, 'binary of ' + n + ' bytes (each length form)');
    }
    const text = 'ü'.repeat(1 << 19); // 1 MiB of two-byte characters
    ws.send(text);
    await expectMessage(ws, text, false, 'text of 1 MiB');
    ws.ping(Buffer.from('are you there'));
    const pong = await ws.next();
    check(pong.type === 'pong' && pong.data.toString() === 'are you there', 'ping answered with a pong carrying its data');
    ws.close(4001, 'done here');
    await expectClose(ws, 4001, 'our close 4001 is answered with 4001');
}

async function failures_close(base) {
    let ws = await open(base + '/ws/echo');
    ws.send(Buffer.from([0x61, 0xc3, 0x28]), { binary: false }); // text that is not UTF-8
    await expectClose(ws, 1007, 'invalid UTF-8 text closes with 1007');
    ws = await open(base + '/ws/echo');
    ws.send('before');
    await expectMessage(ws, 'before', false, 'echo before a normal close');
    ws.close(1000);
    await expectClose(ws, 1000, 'a normal close is answered with 1000');
    ws = await open(base + '/ws/echo');
    ws.close(1001, 'going away');
    await expectClose(ws, 1001, '1001 is answered with 1001');
}

async function chat(base) {
    const a = await open(base + '/ws/chat');
    const b = await open(base + '/ws/chat');
    a.send('from a');
    await expectMessage(a, 'from a', false, 'chat: a gets its own message');
    await expectMessage(b, 'from a', false, 'chat: b gets a\'s message');
    b.send('from b');
    await expectMessage(a, 'from b', false, 'chat: a gets b\'s message');
    await expectMessage(b, 'from b', false, 'chat: b gets its own message');
    const bin = crypto.randomBytes(1000);
    b.send(bin);
    await expectMessage(a, bin, true, 'chat: a binary message stays binary');
    await expectMessage(b, bin, true, 'chat: and reaches its sender too');
    a.close(1000);
    b.close(1000);
    await expectClose(a, 1000, 'chat: a closes cleanly');
    await expectClose(b, 1000, 'chat: b closes cleanly');
}

// The server for pier ws-client: echoes each message, reports each event. After the message
// "please close" it closes with 4002; after "send tricky" it sends a ping, a fragmented
// message and a 1 MiB message, which the client must print (and answer the ping).
function server() {
    const wss = new WebSocket.Server({ host: '127.0.0.1', port: 0 });
    const say = (o) => console.log(JSON.stringify(o));
    wss.on('listening', () => console.log('port ' + wss.address().port));
    wss.on('connection', (ws, req) => {
        say({ ev: 'open', path: req.url });
        ws.on('message', (data, isBinary) => {
            const s = Buffer.from(data).toString();
            say({ ev: 'message', data: s, binary: isBinary });
            if (s === 'please close') {
                ws.close(4002, 'asked to');
            } else if (s === 'send tricky') {
                ws.ping('ping from node');
                ws.send('frag', { fin: false });
                ws.send('mented', { fin: true });
                ws.send('x'.repeat(1 << 20));
            } else {
                ws.send(data, { binary: isBinary });
            }
        });
        ws.on('pong', (data) => say({ ev: 'pong', data: Buffer.from(data).toString() }));
        ws.on('close', (code, reason) => say({ ev: 'close', code, reason: reason.toString() }));
    });
}

async function main() {
    const mode = process.argv[2];
    if (mode === 'server')
        return server();
    const base = process.argv[3];
    const stop = setTimeout(() => { console.log('FAIL timed out'); process.exit(1); }, 120000);
    try {
        await echo(base);
        await failures_close(base);
        await chat(base);
    } catch (e) {
        check(false, 'no exception: ' + e);
    }
    clearTimeout(stop);
    console.log(failures ? 'FAILED ' + failures : 'PASSED');
    process.exit(failures ? 1 : 0);
}

main();
