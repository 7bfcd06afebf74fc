"""Scheduling: availability rules, free-slot search and bookings.

``slots`` holds the pure availability arithmetic (no I/O); services, stores
and routes build on it.
"""
