"""WebRTC signaling for consultation rooms, with a waiting room (namespace /signal)."""
