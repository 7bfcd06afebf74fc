"""End-to-end encrypted chat: the envelope format, and (later) its service, store and transports."""
