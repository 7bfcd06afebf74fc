"""The server's own WebRTC peer (aiortc): pre-call network tests (docs/rtc.md).

``sdp`` and ``figures`` are pure; ``network_test`` runs the server's peers under
their limits; ``probe`` is the matching client; ``service``, ``store`` and
``routes`` record the results with the consultation and serve them over REST.
"""
