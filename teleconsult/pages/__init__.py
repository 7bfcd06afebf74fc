"""The web pages (sign-in, patient, front desk, consultation room) served at ``/``.

Plain ES modules, one stylesheet, one string catalogue per language and vendored
libraries: nothing is built or downloaded when the server runs (docs/pages.md).
"""
