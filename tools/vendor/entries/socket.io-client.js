// The Socket.IO client (WebSocket, and long-polling when WebSocket is blocked).
export { io, Manager, Socket } from "socket.io-client";
