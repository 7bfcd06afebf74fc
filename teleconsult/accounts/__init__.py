"""Accounts: clinics, users and roles, sign-in with rotating refresh tokens, sessions."""
