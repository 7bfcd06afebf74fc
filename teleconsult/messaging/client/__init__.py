"""The chat client library: device keys and envelope crypto; sending and resuming come later.

Runs on user devices (and in tests and the load generator). Private keys live
here and never reach the server.
"""
