"""The Python client library: device keys and envelope crypto, REST, Socket.IO and MQTT
transports, the chat client (retry, ordered exactly-once delivery, resume), signaling and
the network-test probe.

Runs on user devices, in tests and in the load generator. Private keys live here and
never reach the server; the server never imports this package.
"""
