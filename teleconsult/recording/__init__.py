"""Recordings sealed at rest: consent, sealing, storage, playback, retention, rotation
(docs/rtc.md, "Recordings")."""
