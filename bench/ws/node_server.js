// The Node `ws` peer of bench/ws: node bench/ws/node_server.js PORT (NODE_PATH=/usr/share/nodejs).
// /ws/echo echoes each message as it came; /ws/chat is a room where every message goes to
// every member, the sender included, written as the ws documentation's broadcast example
// (each member's send() frames the message for itself). No compression, as pier's default.
'use strict';
const { WebSocketServer } = require('ws');

const port = Number(process.argv[2] || 8081);
const wss = new WebSocketServer({ host: '127.0.0.1', port, maxPayload: 16 << 20, perMessageDeflate: false,
                                  clientTracking: false, backlog: 4096 });
const room = new Set();

wss.on('connection', (ws, req) => {
    if (req.url === '/ws/chat') {
        room.add(ws);
        ws.on('close', () => room.delete(ws));
        ws.on('message', (data, isBinary) => {
            for (const member of room)
                member.send(data, { binary: isBinary });
        });
    } else {
        ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
    }
    ws.on('error', () => {});
});
wss.on('listening', () => console.error('node ws: listening on 127.0.0.1:' + port));
process.on('SIGTERM', () => process.exit(0));
