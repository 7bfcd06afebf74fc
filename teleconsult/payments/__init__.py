"""Payments (issue 15): invoices, the double-entry ledger, providers and their simulators.

See docs/payments.md. ``money`` is pure; ``ledger/`` and ``invoice_store`` hold the
SQL; ``service`` the rules; ``providers/`` talk to MTN MoMo, M-Pesa Daraja, a
Paystack-style card gateway, and cash; ``simulators/`` stand in for them in tests
and in the demo clinic; ``reconcile`` polls what is pending; ``routes`` is HTTP.
"""
