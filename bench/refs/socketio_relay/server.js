// A minimal Socket.IO relay: the reference "what many would pick instead" for
// bench/chat_delivery.py and bench/idle_memory.py.
//
// Clients connect to the namespace /chat with auth {pair: <n>}. The first two
// connections of a pair are its two ends; an event `send` {id, payload} from one
// end is pushed to the other as `message` (the same object) and acknowledged to
// the sender with {ok: true, seq}, the pair's running count. Nothing is stored,
// checked or encrypted: this is the transport's ceiling, not a chat server.
//
// Environment: HOST (127.0.0.1), PORT (required), MAX_SECONDS (600): the
// process exits by itself after that long. The benchmark pins it to a core and
// has the kernel end it with its parent (prctl in the spawning process).
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");

const host = process.env.HOST || "127.0.0.1";
const port = Number(process.env.PORT);
const maxSeconds = Number(process.env.MAX_SECONDS || 600);
if (!Number.isInteger(port) || port <= 0) {
  console.error("PORT must be set");
  process.exit(2);
}

const httpServer = http.createServer();
const io = new Server(httpServer, { serveClient: false });
const pairs = new Map(); // pair -> {ends: [socket, socket], seq}

io.of("/chat").on("connection", (socket) => {
  const key = String((socket.handshake.auth || {}).pair ?? socket.id);
  let pair = pairs.get(key);
  if (pair === undefined) {
    pair = { ends: [], seq: 0 };
    pairs.set(key, pair);
  }
  pair.ends.push(socket);

  socket.on("send", (data, ack) => {
    const peer = pair.ends.find((end) => end !== socket);
    if (peer !== undefined) {
      peer.emit("message", data);
    }
    pair.seq += 1;
    if (typeof ack === "function") {
      ack({ ok: true, seq: pair.seq });
    }
  });

  socket.on("disconnect", () => {
    pair.ends = pair.ends.filter((end) => end !== socket);
    if (pair.ends.length === 0) {
      pairs.delete(key);
    }
  });
});

httpServer.listen(port, host, () => {
  console.log(`socketio-relay listening on http://${host}:${port}`);
});

setTimeout(() => process.exit(0), maxSeconds * 1000).unref();
for (const signal of ["SIGTERM", "SIGINT"]) {
  process.on(signal, () => process.exit(0));
}
