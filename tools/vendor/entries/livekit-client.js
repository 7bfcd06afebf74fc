// LiveKit's browser client: the consultation room's LiveKit mode (js/room/livekit.js),
// loaded with import() only when a room's SFU grant is a LiveKit one.
export {
  ConnectionState,
  DisconnectReason,
  LocalAudioTrack,
  LocalVideoTrack,
  Room,
  RoomEvent,
  Track,
  setLogLevel,
} from "livekit-client";
