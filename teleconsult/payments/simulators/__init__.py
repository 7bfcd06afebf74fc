"""Simulators of the payment providers (the only stand-ins the tests may use).

Each is an aiohttp application that takes the provider's real request shapes,
checks its credentials the way the provider does (and answers its real errors),
answers with its real shapes and codes, and sends its callbacks. A
:class:`~teleconsult.payments.simulators.common.Behaviour` makes it misbehave:
delay, drop, duplicate and reorder callbacks, forge some (bad signature, wrong
amount, unknown reference), fail payments, let them time out, or answer its API
slowly or with a 500. ``truth`` is the ground truth tests compare against.

``build_simulators()`` mounts all three under one application (``/momo``,
``/mpesa``, ``/card``), with a control API at ``/_control``.
"""

from teleconsult.payments.simulators.app import Simulators, build_simulators

__all__ = ["Simulators", "build_simulators"]
