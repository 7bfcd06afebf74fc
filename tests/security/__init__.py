"""Attacks from outside, each reproduced against a real server process and brokers (issue 11)."""
