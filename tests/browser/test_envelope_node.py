"""The browser's chat envelope (static/js/chat/) against the Python reference, under Node.

The same ES modules the pages load, with the vendored noble and msgpack bundles, run under
``node``: the protocol's test vector byte for byte, envelopes sealed in JavaScript open with
``teleconsult.client.crypto`` and the reverse, in both encodings, and tampering is refused.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from teleconsult.client.crypto import DeviceKeys, open_envelope, seal
from teleconsult.messaging.envelope import (
    EnvelopeError,
    EnvelopeErrorCode,
    from_json,
    from_msgpack,
    to_json,
    to_msgpack,
)
from tests.browser.nodekit import ROOT, run_node

SCRIPT = Path(__file__).with_name("envelope_check.mjs")
PROTOCOL = ROOT / "docs" / "protocol.md"


def node(command: dict[str, Any]) -> dict[str, Any]:
    answer: dict[str, Any] = run_node(SCRIPT, command)
    return answer


def protocol_vector() -> dict[str, str]:
    """The hex blocks of docs/protocol.md's "Test vector" section, by name."""
    text = PROTOCOL.read_text().split("## Test vector", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"^(\w+):\n```\n(.*?)```", text, flags=re.S | re.M)
    return {name: "".join(body.split()) for name, body in blocks}


def test_the_protocol_test_vector_byte_for_byte() -> None:
    expected = protocol_vector()
    assert {"signing_bytes", "signature", "msgpack", "associated_data"} <= expected.keys()
    got = node({"op": "vector"})
    for name in ("signing_bytes", "associated_data", "ed25519_public_key", "signature", "msgpack"):
        assert got[name] == expected[name], name
    assert got["msgpack_round_trip"] == expected["msgpack"]
    # The JSON form is the reference's JSON form of the same envelope.
    assert to_json(from_msgpack(bytes.fromhex(expected["msgpack"]))) == got["json"]


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_an_envelope_sealed_in_javascript_opens_in_python(encoding: str) -> None:
    sender, reader = DeviceKeys.generate(), DeviceKeys.generate()
    sender_id, reader_id, thread = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    text = "Bonjour docteur, j'ai de la fièvre 🤒".encode()
    sealed = node(
        {
            "op": "seal",
            "private": sender.private_bytes().hex(),
            "device_id": str(sender_id),
            "thread_id": str(thread),
            "plaintext": text.hex(),
            "sent_at_ms": 1767225600000,
            "recipients": {str(reader_id): reader.encryption_public_key.hex()},
        }
    )
    env = (
        from_msgpack(bytes.fromhex(sealed["msgpack"]))
        if encoding == "msgpack"
        else from_json(sealed["json"])
    )
    assert env.thread_id == thread and env.sender_device_id == sender_id
    assert set(env.recipient_ids) == {sender_id, reader_id}  # the sender's own device too
    for keys, device in ((reader, reader_id), (sender, sender_id)):
        plain = open_envelope(
            env, me=keys, my_device_id=device, sender_signing_key=sender.signing_public_key
        )
        assert plain == text
    # Both encodings carry the same envelope.
    assert to_msgpack(from_json(sealed["json"])).hex() == sealed["msgpack"]


@pytest.mark.parametrize("encoding", ["msgpack", "json"])
def test_an_envelope_sealed_in_python_opens_in_javascript(encoding: str) -> None:
    sender, reader = DeviceKeys.generate(), DeviceKeys.generate()
    sender_id, reader_id = uuid.uuid4(), uuid.uuid4()
    text = b"Take one tablet twice a day."
    env = seal(
        plaintext=text,
        thread_id=uuid.uuid4(),
        sender=sender,
        sender_device_id=sender_id,
        recipients={reader_id: reader.encryption_public_key},
    )
    wire: dict[str, Any] = (
        {"msgpack": to_msgpack(env).hex()} if encoding == "msgpack" else {"json": to_json(env)}
    )
    got = node(
        {
            "op": "open",
            "private": reader.private_bytes().hex(),
            "device_id": str(reader_id),
            "sender_signing_key": sender.signing_public_key.hex(),
            **wire,
        }
    )
    assert got == {"plaintext": text.hex()}


def _python_envelope() -> tuple[DeviceKeys, DeviceKeys, uuid.UUID, dict[str, Any]]:
    sender, reader = DeviceKeys.generate(), DeviceKeys.generate()
    reader_id = uuid.uuid4()
    env = seal(
        plaintext=b"secret",
        thread_id=uuid.uuid4(),
        sender=sender,
        sender_device_id=uuid.uuid4(),
        recipients={reader_id: reader.encryption_public_key},
    )
    return sender, reader, reader_id, to_json(env)


def _open_in_js(reader: DeviceKeys, device_id: uuid.UUID, signer: bytes, obj: Any) -> Any:
    return node(
        {
            "op": "open",
            "private": reader.private_bytes().hex(),
            "device_id": str(device_id),
            "sender_signing_key": signer.hex(),
            "json": obj,
        }
    )


def test_javascript_refuses_a_tampered_body() -> None:
    sender, reader, reader_id, obj = _python_envelope()
    env = from_json(obj)
    body = bytearray(env.ciphertext)
    body[0] ^= 1
    tampered = to_json(replace(env, ciphertext=bytes(body)))
    assert _open_in_js(reader, reader_id, sender.signing_public_key, tampered) == {
        "error": "bad_signature"
    }


def test_javascript_refuses_another_devices_signature() -> None:
    _, reader, reader_id, obj = _python_envelope()
    stranger = DeviceKeys.generate()
    got = _open_in_js(reader, reader_id, stranger.signing_public_key, obj)
    assert got == {"error": "bad_signature"}


def test_javascript_says_when_this_device_is_not_a_recipient() -> None:
    sender, _, _, obj = _python_envelope()
    outsider = DeviceKeys.generate()
    got = _open_in_js(outsider, uuid.uuid4(), sender.signing_public_key, obj)
    assert got == {"error": "not_a_recipient"}


def test_javascript_cannot_open_a_key_sealed_for_another_key() -> None:
    sender, _, reader_id, obj = _python_envelope()
    impostor = DeviceKeys.generate()  # claims the reader's device id with other keys
    got = _open_in_js(impostor, reader_id, sender.signing_public_key, obj)
    assert got == {"error": "decrypt_failed"}


def test_browser_device_keys_are_web_crypto_keys_that_cannot_be_exported() -> None:
    got = node({"op": "generate"})
    assert got["web_crypto"] is True
    assert got["extractable"] == [False, False]
    assert len(bytes.fromhex(got["x25519_public"])) == 32


def test_python_refuses_what_javascript_sealed_once_tampered() -> None:
    sender, reader = DeviceKeys.generate(), DeviceKeys.generate()
    reader_id = uuid.uuid4()
    sealed = node(
        {
            "op": "seal",
            "private": sender.private_bytes().hex(),
            "device_id": str(uuid.uuid4()),
            "thread_id": str(uuid.uuid4()),
            "plaintext": b"hello".hex(),
            "recipients": {str(reader_id): reader.encryption_public_key.hex()},
        }
    )
    obj = sealed["json"]
    obj["client_msg_id"] = "x" * 22  # the body is bound to its id: the signature breaks
    with pytest.raises(EnvelopeError) as caught:
        open_envelope(
            from_json(obj),
            me=reader,
            my_device_id=reader_id,
            sender_signing_key=(sender.signing_public_key),
        )
    assert caught.value.code is EnvelopeErrorCode.BAD_SIGNATURE
