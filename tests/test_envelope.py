"""The envelope format: encodings, validation codes, signatures, limits, the documented costs."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import msgpack
import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from teleconsult.client.crypto import DeviceKeys, seal
from teleconsult.core.errors import TeleconsultError
from teleconsult.messaging.envelope import (
    DEFAULT_MAX_BYTES,
    MAX_RECIPIENTS,
    SEALED_KEY_BYTES,
    Envelope,
    EnvelopeError,
    EnvelopeErrorCode,
    associated_data,
    decode_b64url,
    encode_b64url,
    encoded_size,
    from_json,
    from_msgpack,
    signing_bytes,
    to_json,
    to_msgpack,
    verify_signature,
)

Code = EnvelopeErrorCode
PROTOCOL_MD = Path(__file__).resolve().parents[1] / "docs" / "protocol.md"
SENDER = DeviceKeys.generate()
# Recipients' X25519 keys; only the public halves matter to the envelope.
RECIPIENT_KEYS = [DeviceKeys.generate().encryption_public_key for _ in range(MAX_RECIPIENTS)]
SENT_AT_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z


def make_envelope(
    *, devices: int = 2, plaintext: bytes = b"x" * 100, sent_at_ms: int | None = SENT_AT_MS
) -> Envelope:
    """An envelope from SENDER's device to ``devices`` devices, the sender's own included."""
    sender_device = uuid4()
    others = {uuid4(): RECIPIENT_KEYS[i] for i in range(devices - 1)}
    return seal(
        plaintext=plaintext,
        thread_id=uuid4(),
        sender=SENDER,
        sender_device_id=sender_device,
        recipients=others,
        sent_at_ms=sent_at_ms,
    )


def wire_array(env: Envelope, **changes: object) -> list[object]:
    """The msgpack array of ``env``, with items replaced by field name."""
    items: list[object] = msgpack.unpackb(to_msgpack(env))
    names = [f.name for f in dataclasses.fields(Envelope)]
    for name, value in changes.items():
        items[names.index(name)] = value
    return items


def packb(obj: object) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)
    return packed


def expect(code: EnvelopeErrorCode, field: str | None = None) -> Any:
    return pytest.raises(EnvelopeError, check=lambda e: e.code == code and e.field == field)


# -- round trips -------------------------------------------------------------------------

envelopes = st.builds(
    make_envelope,
    devices=st.integers(1, MAX_RECIPIENTS),
    plaintext=st.binary(max_size=2000),
    sent_at_ms=st.none() | st.integers(0, 2**53 - 1),
)
slow = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@slow
@given(envelopes)
def test_msgpack_round_trip_keeps_every_field(env: Envelope) -> None:
    decoded = from_msgpack(to_msgpack(env))
    assert decoded == env
    verify_signature(decoded, SENDER.signing_public_key)


@slow
@given(envelopes)
def test_json_round_trip_through_text_keeps_every_field(env: Envelope) -> None:
    decoded = from_json(json.loads(json.dumps(to_json(env))))
    assert decoded == env
    verify_signature(decoded, SENDER.signing_public_key)


def test_json_accepts_absent_or_null_client_clock() -> None:
    env = make_envelope(sent_at_ms=None)
    obj = to_json(env)
    assert "sent_at_ms" not in obj
    assert from_json(obj) == env
    assert from_json({**obj, "sent_at_ms": None}) == env


def test_json_accepts_uppercase_uuids() -> None:
    env = make_envelope()
    obj = to_json(env)
    assert from_json({**obj, "thread_id": str(env.thread_id).upper()}) == env


def test_recipient_lookup() -> None:
    env = make_envelope(devices=3)
    first, sealed = env.keys[0]
    assert env.recipient_ids == tuple(d for d, _ in env.keys)
    assert env.sealed_key_for(first) == sealed
    assert env.sealed_key_for(uuid4()) is None


def test_repr_shows_no_ciphertext_or_keys() -> None:
    env = make_envelope()
    text = repr(env)
    assert env.client_msg_id in text
    assert env.ciphertext.hex()[:16] not in text
    assert repr(env.ciphertext)[:20] not in text


# -- signatures --------------------------------------------------------------------------


def flip(data: bytes, index: int = 0) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


def tampered_variants(env: Envelope) -> dict[str, Envelope]:
    (dev0, key0), (dev1, key1) = env.keys[:2]
    cmid = env.client_msg_id
    other = "A" if cmid[0] != "A" else "B"
    rest = env.keys[2:]
    return {
        "client_msg_id": dataclasses.replace(env, client_msg_id=other + cmid[1:]),
        "thread_id": dataclasses.replace(env, thread_id=uuid4()),
        "sender_device_id": dataclasses.replace(env, sender_device_id=uuid4()),
        "sent_at_ms+1": dataclasses.replace(env, sent_at_ms=SENT_AT_MS + 1),
        "sent_at_ms removed": dataclasses.replace(env, sent_at_ms=None),
        "nonce": dataclasses.replace(env, nonce=flip(env.nonce, 23)),
        "ciphertext": dataclasses.replace(env, ciphertext=flip(env.ciphertext, 50)),
        "ciphertext truncated": dataclasses.replace(env, ciphertext=env.ciphertext[:-1]),
        "sealed key": dataclasses.replace(env, keys=((dev0, flip(key0, 79)), (dev1, key1), *rest)),
        "recipient id": dataclasses.replace(env, keys=((uuid4(), key0), (dev1, key1), *rest)),
        "keys reordered": dataclasses.replace(env, keys=((dev1, key1), (dev0, key0), *rest)),
        "key dropped": dataclasses.replace(env, keys=((dev1, key1), *rest)),
        "key added": dataclasses.replace(env, keys=(*env.keys, (uuid4(), key0))),
        "signature": dataclasses.replace(env, signature=flip(env.signature, 10)),
    }


@pytest.mark.parametrize("change", list(tampered_variants(make_envelope(devices=3))))
def test_any_changed_field_breaks_the_signature(change: str) -> None:
    env = make_envelope(devices=3)
    verify_signature(env, SENDER.signing_public_key)
    with expect(Code.BAD_SIGNATURE, "signature"):
        verify_signature(tampered_variants(env)[change], SENDER.signing_public_key)


def test_signature_by_another_device_is_rejected() -> None:
    env = make_envelope()
    with expect(Code.BAD_SIGNATURE, "signature"):
        verify_signature(env, DeviceKeys.generate().signing_public_key)


@pytest.mark.parametrize("key", [b"", b"\x00" * 31, b"\x00" * 33])
def test_malformed_signing_key_is_a_bad_signature(key: bytes) -> None:
    with expect(Code.BAD_SIGNATURE):
        verify_signature(make_envelope(), key)


def documented_hex(name: str) -> str:
    """The hex of a ``name:`` block in the test vector of docs/protocol.md."""
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    match = re.search(rf"^{re.escape(name)}:\n```\n([0-9a-f\n]+)```", text, re.MULTILINE)
    assert match, f"docs/protocol.md has no {name} block"
    return match.group(1).replace("\n", "")


def vector_envelope() -> Envelope:
    return Envelope(
        v=1,
        client_msg_id="abcdefghijklmnopqrstuv",
        thread_id=UUID("11111111-2222-4333-8444-555555555555"),
        sender_device_id=UUID("66666666-7777-4888-8999-aaaaaaaaaaaa"),
        sent_at_ms=SENT_AT_MS,
        nonce=bytes(range(24)),
        ciphertext=bytes(range(100, 116)),
        keys=((UUID("bbbbbbbb-cccc-4ddd-8eee-ffffffffffff"), bytes(range(80))),),
        signature=bytes(64),
    )


def test_signing_bytes_and_associated_data_match_the_documented_vector() -> None:
    env = vector_envelope()
    signer = nacl.signing.SigningKey(bytes(range(32)))
    sig = signer.sign(signing_bytes(env)).signature
    assert signing_bytes(env).hex() == documented_hex("signing_bytes")
    assert hashlib.sha256(signing_bytes(env)).hexdigest() == documented_hex("sha256")
    assert bytes(signer.verify_key).hex() == documented_hex("ed25519_public_key")
    assert sig.hex() == documented_hex("signature")
    assert associated_data(env).hex() == documented_hex("associated_data")
    signed = dataclasses.replace(env, signature=sig)
    assert to_msgpack(signed).hex() == documented_hex("msgpack")
    verify_signature(
        from_msgpack(bytes.fromhex(documented_hex("msgpack"))), bytes(signer.verify_key)
    )


# -- strict msgpack decoding -------------------------------------------------------------

ENV = make_envelope(devices=2)
OK = wire_array(ENV)
DEV0, KEY0 = ENV.keys[0][0].bytes, ENV.keys[0][1]
MSGPACK_CASES: dict[str, tuple[bytes, EnvelopeErrorCode, str | None]] = {
    "empty": (b"", Code.MALFORMED, None),
    "garbage": (b"\xc1\xff\x00", Code.MALFORMED, None),
    "truncated": (to_msgpack(ENV)[:-1], Code.MALFORMED, None),
    "trailing byte": (to_msgpack(ENV) + b"\x00", Code.MALFORMED, None),
    "a map": (packb({"v": 1}), Code.MALFORMED, None),
    "empty array": (packb([]), Code.MALFORMED, None),
    "extra item": (packb([*OK, 1]), Code.MALFORMED, None),
    "missing item": (packb(OK[:-1]), Code.MALFORMED, None),
    "version 2": (packb(wire_array(ENV, v=2)), Code.UNSUPPORTED_VERSION, "v"),
    "version 2, other shape": (packb([2, "x"]), Code.UNSUPPORTED_VERSION, "v"),
    "version as text": (packb(wire_array(ENV, v="1")), Code.BAD_FIELD, "v"),
    "version as bool": (packb(wire_array(ENV, v=True)), Code.BAD_FIELD, "v"),
    "short id": (packb(wire_array(ENV, client_msg_id="a" * 15)), Code.BAD_FIELD, "client_msg_id"),
    "long id": (packb(wire_array(ENV, client_msg_id="a" * 65)), Code.BAD_FIELD, "client_msg_id"),
    "id with /": (packb(wire_array(ENV, client_msg_id="a/" * 10)), Code.BAD_FIELD, "client_msg_id"),
    "id as bin": (packb(wire_array(ENV, client_msg_id=b"a" * 20)), Code.BAD_FIELD, "client_msg_id"),
    "thread as text": (
        packb(wire_array(ENV, thread_id=str(ENV.thread_id))),
        Code.BAD_FIELD,
        "thread_id",
    ),
    "sender 15 bytes": (
        packb(wire_array(ENV, sender_device_id=b"x" * 15)),
        Code.BAD_FIELD,
        "sender_device_id",
    ),
    "clock negative": (packb(wire_array(ENV, sent_at_ms=-1)), Code.BAD_FIELD, "sent_at_ms"),
    "clock float": (packb(wire_array(ENV, sent_at_ms=1.5)), Code.BAD_FIELD, "sent_at_ms"),
    "clock 2**53": (packb(wire_array(ENV, sent_at_ms=2**53)), Code.BAD_FIELD, "sent_at_ms"),
    "nonce 23 bytes": (packb(wire_array(ENV, nonce=b"n" * 23)), Code.BAD_FIELD, "nonce"),
    "nonce as text": (packb(wire_array(ENV, nonce="n" * 24)), Code.BAD_FIELD, "nonce"),
    "ciphertext 15 bytes": (
        packb(wire_array(ENV, ciphertext=b"c" * 15)),
        Code.BAD_FIELD,
        "ciphertext",
    ),
    "signature 63 bytes": (
        packb(wire_array(ENV, signature=b"s" * 63)),
        Code.BAD_FIELD,
        "signature",
    ),
    "keys a map": (packb(wire_array(ENV, keys={"a": 1})), Code.BAD_FIELD, "keys"),
    "no keys": (packb(wire_array(ENV, keys=[])), Code.BAD_FIELD, "keys"),
    "key not a pair": (packb(wire_array(ENV, keys=[[DEV0]])), Code.BAD_FIELD, "keys[0]"),
    "key id as text": (
        packb(wire_array(ENV, keys=[["x", KEY0]])),
        Code.BAD_FIELD,
        "keys[0].device_id",
    ),
    "sealed key 79 bytes": (
        packb(wire_array(ENV, keys=[[DEV0, KEY0[:-1]]])),
        Code.BAD_FIELD,
        "keys[0].sealed_key",
    ),
    "duplicate recipient": (
        packb(wire_array(ENV, keys=[[DEV0, KEY0], [DEV0, KEY0]])),
        Code.DUPLICATE_RECIPIENT,
        "keys[1].device_id",
    ),
    "too many recipients": (
        packb(wire_array(ENV, keys=[[uuid4().bytes, KEY0] for _ in range(MAX_RECIPIENTS + 1)])),
        Code.TOO_MANY_RECIPIENTS,
        "keys",
    ),
}


@pytest.mark.parametrize("case", list(MSGPACK_CASES))
def test_from_msgpack_rejects_with_the_right_code(case: str) -> None:
    data, code, field = MSGPACK_CASES[case]
    with expect(code, field):
        from_msgpack(data)


def test_from_msgpack_rejects_oversized_input_before_parsing() -> None:
    garbage = b"\xc1" * (DEFAULT_MAX_BYTES + 1)
    with expect(Code.TOO_LARGE):
        from_msgpack(garbage)


def test_from_msgpack_honours_a_smaller_limit() -> None:
    data = to_msgpack(ENV)
    assert from_msgpack(data, max_bytes=len(data)) == ENV
    with expect(Code.TOO_LARGE):
        from_msgpack(data, max_bytes=len(data) - 1)


def test_from_msgpack_rejects_text() -> None:
    with expect(Code.MALFORMED):
        from_msgpack(to_msgpack(ENV).hex())  # type: ignore[arg-type]


msgpack_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats()
    | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_envelope_errors(data: bytes) -> None:
    with pytest.raises(EnvelopeError):
        from_msgpack(data)


@settings(max_examples=300)
@given(msgpack_values)
def test_arbitrary_msgpack_values_only_raise_envelope_errors(value: object) -> None:
    with pytest.raises(EnvelopeError):
        from_msgpack(packb(value))


@settings(max_examples=300)
@given(st.integers(0, 8), msgpack_values)
def test_one_wrong_item_only_raises_envelope_errors(index: int, value: object) -> None:
    items = list(OK)
    items[index] = value
    try:
        from_msgpack(packb(items))
    except EnvelopeError:
        pass


@settings(max_examples=300)
@given(st.data())
def test_corrupted_encodings_only_raise_envelope_errors(data: st.DataObject) -> None:
    encoded = bytearray(to_msgpack(ENV))
    for _ in range(data.draw(st.integers(1, 4))):
        encoded[data.draw(st.integers(0, len(encoded) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    try:
        from_msgpack(bytes(encoded[:cut]))
    except EnvelopeError:
        pass


# -- strict JSON decoding ----------------------------------------------------------------

J = to_json(ENV)
JKEY = {"device_id": str(ENV.keys[0][0]), "sealed_key": encode_b64url(KEY0)}
JSON_CASES: dict[str, tuple[object, EnvelopeErrorCode, str | None]] = {
    "an array": ([J], Code.MALFORMED, None),
    "text": ("envelope", Code.MALFORMED, None),
    "no version": ({k: v for k, v in J.items() if k != "v"}, Code.BAD_FIELD, "v"),
    "version 2": ({"v": 2, "other": "shape"}, Code.UNSUPPORTED_VERSION, "v"),
    "version 1.0": ({**J, "v": 1.0}, Code.BAD_FIELD, "v"),
    "missing nonce": ({k: v for k, v in J.items() if k != "nonce"}, Code.BAD_FIELD, "nonce"),
    "extra field": ({**J, "body": "hello"}, Code.BAD_FIELD, "body"),
    "thread not a uuid": ({**J, "thread_id": "x"}, Code.BAD_FIELD, "thread_id"),
    "thread urn form": (
        {**J, "thread_id": f"urn:uuid:{ENV.thread_id}"},
        Code.BAD_FIELD,
        "thread_id",
    ),
    "thread without dashes": ({**J, "thread_id": ENV.thread_id.hex}, Code.BAD_FIELD, "thread_id"),
    "clock as text": ({**J, "sent_at_ms": "1"}, Code.BAD_FIELD, "sent_at_ms"),
    "clock as bool": ({**J, "sent_at_ms": False}, Code.BAD_FIELD, "sent_at_ms"),
    "nonce padded": ({**J, "nonce": encode_b64url(b"n" * 23) + "="}, Code.BAD_FIELD, "nonce"),
    "nonce std alphabet": ({**J, "nonce": "+" * 32}, Code.BAD_FIELD, "nonce"),
    "nonce non-canonical": ({**J, "nonce": "AB"}, Code.BAD_FIELD, "nonce"),
    "nonce bad length": ({**J, "nonce": "A"}, Code.BAD_FIELD, "nonce"),
    "nonce as bytes": ({**J, "nonce": b"n" * 24}, Code.BAD_FIELD, "nonce"),
    "signature short": ({**J, "signature": encode_b64url(b"s" * 63)}, Code.BAD_FIELD, "signature"),
    "keys an object": ({**J, "keys": JKEY}, Code.BAD_FIELD, "keys"),
    "key an array": ({**J, "keys": [list(JKEY.values())]}, Code.BAD_FIELD, "keys[0]"),
    "key extra field": ({**J, "keys": [{**JKEY, "x": 1}]}, Code.BAD_FIELD, "keys[0].x"),
    "key missing field": (
        {**J, "keys": [{"device_id": JKEY["device_id"]}]},
        Code.BAD_FIELD,
        "keys[0].sealed_key",
    ),
    "sealed key short": (
        {**J, "keys": [{**JKEY, "sealed_key": encode_b64url(KEY0[:-1])}]},
        Code.BAD_FIELD,
        "keys[0].sealed_key",
    ),
    "duplicate recipient": (
        {**J, "keys": [JKEY, JKEY]},
        Code.DUPLICATE_RECIPIENT,
        "keys[1].device_id",
    ),
    "too many recipients": (
        {**J, "keys": [JKEY] * (MAX_RECIPIENTS + 1)},
        Code.TOO_MANY_RECIPIENTS,
        "keys",
    ),
    "ciphertext over the limit": (
        {**J, "ciphertext": "A" * (DEFAULT_MAX_BYTES * 4 // 3 + 4)},
        Code.TOO_LARGE,
        None,
    ),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_from_json_rejects_with_the_right_code(case: str) -> None:
    obj, code, field = JSON_CASES[case]
    with expect(code, field):
        from_json(obj)


def test_from_json_checks_the_encoded_size_after_parsing() -> None:
    size = encoded_size(ENV)
    assert from_json(J, max_bytes=size) == ENV
    with expect(Code.TOO_LARGE):
        from_json(J, max_bytes=size - 1)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=10) | st.dictionaries(st.text(), inner, max_size=5),
    max_leaves=30,
)


@settings(max_examples=300)
@given(json_values)
def test_arbitrary_json_only_raises_envelope_errors(value: object) -> None:
    with pytest.raises(EnvelopeError):
        from_json(value)


@settings(max_examples=300)
@given(st.sampled_from([*J, "extra"]), json_values)
def test_one_wrong_json_field_only_raises_envelope_errors(name: str, value: object) -> None:
    try:
        from_json({**J, name: value})
    except EnvelopeError:
        pass


@settings(max_examples=200)
@given(json_values)
def test_one_wrong_json_key_member_only_raises_envelope_errors(value: object) -> None:
    try:
        from_json({**J, "keys": [{**JKEY, "sealed_key": value}]})
    except EnvelopeError:
        pass


@given(st.binary(max_size=200))
def test_base64url_round_trip(data: bytes) -> None:
    text = encode_b64url(data)
    assert "=" not in text
    assert decode_b64url(text, field="f") == data


# -- construction and errors -------------------------------------------------------------


def test_constructing_an_invalid_envelope_raises_envelope_error() -> None:
    with expect(Code.BAD_FIELD, "keys"):
        dataclasses.replace(ENV, keys=list(ENV.keys))  # type: ignore[arg-type]
    with expect(Code.BAD_FIELD, "keys[0].sealed_key"):
        dataclasses.replace(ENV, keys=((uuid4(), b"k" * (SEALED_KEY_BYTES + 1)),))
    with expect(Code.BAD_FIELD, "thread_id"):
        dataclasses.replace(ENV, thread_id=str(ENV.thread_id))  # type: ignore[arg-type]


def test_envelope_error_is_a_teleconsult_error_with_a_status() -> None:
    error = EnvelopeError(Code.TOO_LARGE, "big")
    assert isinstance(error, TeleconsultError)
    assert error.status == 413
    assert EnvelopeError(Code.BAD_FIELD, "bad", field="nonce").status == 400
    assert str(EnvelopeError(Code.BAD_FIELD, "bad", field="nonce")) == "nonce: bad"


# -- what one message costs (docs/protocol.md) -------------------------------------------


@pytest.mark.parametrize("devices", [1, 2, 5, 10, 64])
def test_documented_byte_costs_are_measured(devices: int) -> None:
    env = make_envelope(devices=devices, plaintext=b"x" * 100)
    msgpack_size = len(to_msgpack(env))
    json_size = len(json.dumps(to_json(env), separators=(",", ":")))
    row = f"| {devices} | {msgpack_size} | {json_size} |"
    assert row in PROTOCOL_MD.read_text(encoding="utf-8"), (
        f"docs/protocol.md should have the row {row}"
    )
