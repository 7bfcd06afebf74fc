"""Client-side crypto: device keys, sealing for several devices, opening, and attacks."""

from __future__ import annotations

import dataclasses
import json
from typing import Any
from uuid import UUID, uuid4

import nacl.public
import nacl.signing
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl import bindings

from teleconsult.client.crypto import (
    DeviceKeys,
    new_client_msg_id,
    open_envelope,
    seal,
)
from teleconsult.messaging.envelope import (
    MAX_RECIPIENTS,
    Envelope,
    EnvelopeError,
    EnvelopeErrorCode,
    associated_data,
    check_client_msg_id,
    decode_b64url,
    from_json,
    from_msgpack,
    signing_bytes,
    to_json,
    to_msgpack,
)

Code = EnvelopeErrorCode
CANARY = b"CANARY-7f3e: patient reports chest pain since Tuesday"


@dataclasses.dataclass(frozen=True)
class Device:
    id: UUID
    keys: DeviceKeys


def device() -> Device:
    return Device(uuid4(), DeviceKeys.generate())


POOL = [device() for _ in range(12)]


def send(sender: Device, to: list[Device], plaintext: bytes = CANARY, **kw: Any) -> Envelope:
    return seal(
        plaintext=plaintext,
        thread_id=kw.pop("thread_id", uuid4()),
        sender=sender.keys,
        sender_device_id=sender.id,
        recipients={d.id: d.keys.encryption_public_key for d in to},
        **kw,
    )


def signer(dev: Device) -> nacl.signing.SigningKey:
    """The device's Ed25519 key, as an attacker holding their own device's keys has it."""
    return nacl.signing.SigningKey(dev.keys.private_bytes()[32:])


def read(env: Envelope, reader: Device, sender: Device) -> bytes:
    return open_envelope(
        env,
        me=reader.keys,
        my_device_id=reader.id,
        sender_signing_key=sender.keys.signing_public_key,
    )


def expect(code: EnvelopeErrorCode) -> Any:
    return pytest.raises(EnvelopeError, check=lambda e: e.code == code)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4000), st.integers(1, len(POOL) - 1), st.booleans())
def test_every_recipient_reads_the_message_after_either_encoding(
    plaintext: bytes, count: int, as_json: bool
) -> None:
    sender, recipients = POOL[0], POOL[1 : 1 + count]
    env = send(sender, recipients, plaintext)
    wire = (
        from_json(json.loads(json.dumps(to_json(env))))
        if as_json
        else from_msgpack(to_msgpack(env))
    )
    assert set(wire.recipient_ids) == {sender.id, *(d.id for d in recipients)}
    for reader in [sender, *recipients]:
        assert read(wire, reader, sender) == plaintext


def test_the_plaintext_never_appears_on_the_wire() -> None:
    env = send(POOL[0], POOL[1:3])
    assert CANARY not in to_msgpack(env)
    assert CANARY.decode() not in json.dumps(to_json(env))
    assert CANARY.decode() not in repr(env)
    assert CANARY not in signing_bytes(env)


def test_senders_own_device_reads_its_message_without_being_listed() -> None:
    sender, recipient = POOL[0], POOL[1]
    env = send(sender, [recipient])
    assert sender.id in env.recipient_ids
    assert read(env, sender, sender) == CANARY


def test_senders_other_device_reads_the_message() -> None:
    phone, laptop, doctor = device(), device(), POOL[1]
    env = send(phone, [laptop, doctor])
    assert read(env, laptop, phone) == CANARY


def test_a_device_that_is_not_a_recipient_cannot_read() -> None:
    env = send(POOL[0], [POOL[1]])
    with expect(Code.NOT_A_RECIPIENT):
        read(env, POOL[2], POOL[0])


def test_another_devices_private_key_cannot_unseal() -> None:
    env = send(POOL[0], [POOL[1]])
    impostor = Device(POOL[1].id, POOL[2].keys)
    with expect(Code.DECRYPT_FAILED):
        read(env, impostor, POOL[0])


def test_a_message_is_only_accepted_with_the_senders_signing_key() -> None:
    env = send(POOL[0], [POOL[1]])
    with expect(Code.BAD_SIGNATURE):
        read(env, POOL[1], POOL[2])


def test_a_changed_ciphertext_is_rejected_before_decryption() -> None:
    env = send(POOL[0], [POOL[1]])
    changed = dataclasses.replace(
        env, ciphertext=bytes([env.ciphertext[0] ^ 1]) + env.ciphertext[1:]
    )
    with expect(Code.BAD_SIGNATURE):
        read(changed, POOL[1], POOL[0])


def test_moving_a_message_to_another_thread_breaks_its_signature() -> None:
    env = send(POOL[0], [POOL[1]])
    moved = dataclasses.replace(env, thread_id=uuid4())
    with expect(Code.BAD_SIGNATURE):
        read(moved, POOL[1], POOL[0])


def test_a_moved_message_resigned_by_an_attacker_fails_the_senders_key() -> None:
    sender, reader, attacker = POOL[0], POOL[1], POOL[2]
    env = send(sender, [reader, attacker])
    moved = dataclasses.replace(env, thread_id=uuid4())
    resigned = dataclasses.replace(
        moved, signature=signer(attacker).sign(signing_bytes(moved)).signature
    )
    with expect(Code.BAD_SIGNATURE):
        read(resigned, reader, sender)


@pytest.mark.parametrize("change", ["thread_id", "client_msg_id"])
def test_a_body_rewrapped_under_another_header_does_not_decrypt(change: str) -> None:
    # A recipient who turns the sender's ciphertext into its own signed envelope in
    # another thread (or under another message id) cannot: the header is AEAD data.
    sender, reader, attacker = POOL[0], POOL[1], POOL[2]
    env = send(sender, [reader, attacker])
    header: dict[str, Any] = {"sender_device_id": attacker.id}
    header[change] = uuid4() if change == "thread_id" else new_client_msg_id()
    rewrapped = dataclasses.replace(env, **header)
    rewrapped = dataclasses.replace(
        rewrapped, signature=signer(attacker).sign(signing_bytes(rewrapped)).signature
    )
    with expect(Code.DECRYPT_FAILED):
        read(rewrapped, reader, attacker)


def test_a_sealed_key_of_garbage_from_the_sender_does_not_decrypt() -> None:
    sender, reader = POOL[0], POOL[1]
    env = send(sender, [reader])
    junk = nacl.public.SealedBox(nacl.public.PublicKey(reader.keys.encryption_public_key)).encrypt(
        b"k" * 31
    )
    keys = tuple((d, junk + b"\x00" if d == reader.id else k) for d, k in env.keys)
    forged = dataclasses.replace(env, keys=keys)
    forged = dataclasses.replace(
        forged, signature=signer(sender).sign(signing_bytes(forged)).signature
    )
    with expect(Code.DECRYPT_FAILED):
        read(forged, reader, sender)


def test_the_message_key_is_the_body_key_and_ad_binds_the_header() -> None:
    # Decrypt by hand, as another-language client would, following docs/protocol.md.
    sender, reader = POOL[0], POOL[1]
    env = send(sender, [reader])
    sealed = env.sealed_key_for(reader.id)
    assert sealed is not None and len(sealed) == 80
    key = nacl.public.SealedBox(nacl.public.PrivateKey(reader.keys.private_bytes()[:32])).decrypt(
        sealed
    )
    body = bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
        env.ciphertext, associated_data(env), env.nonce, key
    )
    assert body == CANARY
    assert len(env.ciphertext) == len(CANARY) + 16


def test_each_seal_uses_a_fresh_key_and_nonce() -> None:
    thread = uuid4()
    cmid = new_client_msg_id()
    first = send(POOL[0], [POOL[1]], thread_id=thread, client_msg_id=cmid)
    second = send(POOL[0], [POOL[1]], thread_id=thread, client_msg_id=cmid)
    assert first.client_msg_id == second.client_msg_id == cmid
    assert first.nonce != second.nonce
    assert first.ciphertext != second.ciphertext
    assert first.keys[0][1] != second.keys[0][1]


def test_client_clock_is_carried_and_signed() -> None:
    env = send(POOL[0], [POOL[1]], sent_at_ms=1_767_225_600_000)
    assert env.sent_at_ms == 1_767_225_600_000
    assert read(env, POOL[1], POOL[0]) == CANARY


def test_too_many_recipients_is_refused_before_sealing() -> None:
    others = [device() for _ in range(MAX_RECIPIENTS)]  # plus the sender: one too many
    with expect(Code.TOO_MANY_RECIPIENTS):
        send(POOL[0], others)
    assert len(send(POOL[0], others[1:]).keys) == MAX_RECIPIENTS


def test_an_oversized_message_is_refused_on_the_client() -> None:
    with expect(Code.TOO_LARGE):
        send(POOL[0], [POOL[1]], plaintext=b"x" * 70_000)
    with expect(Code.TOO_LARGE):
        send(POOL[0], [POOL[1]], plaintext=b"x" * 1000, max_bytes=1200)


@pytest.mark.parametrize(
    "public_key", [b"", b"k" * 31, b"k" * 33, bytes(32)], ids=["empty", "31", "33", "low-order"]
)
def test_an_unusable_recipient_key_is_refused(public_key: bytes) -> None:
    with expect(Code.BAD_FIELD):
        seal(
            plaintext=CANARY,
            thread_id=uuid4(),
            sender=POOL[0].keys,
            sender_device_id=POOL[0].id,
            recipients={uuid4(): public_key},
        )


def test_a_wrong_key_for_the_senders_own_device_is_refused() -> None:
    with expect(Code.BAD_FIELD):
        seal(
            plaintext=CANARY,
            thread_id=uuid4(),
            sender=POOL[0].keys,
            sender_device_id=POOL[0].id,
            recipients={POOL[0].id: POOL[1].keys.encryption_public_key},
        )


@pytest.mark.parametrize("cmid", ["short", "has space in it ok", "ü" * 20, "a" * 65])
def test_an_invalid_client_message_id_is_refused(cmid: str) -> None:
    with expect(Code.BAD_FIELD):
        send(POOL[0], [POOL[1]], client_msg_id=cmid)


def test_new_client_message_ids_are_valid_and_distinct() -> None:
    ids = {new_client_msg_id() for _ in range(1000)}
    assert len(ids) == 1000
    for cmid in ids:
        assert check_client_msg_id(cmid) == cmid
        assert len(cmid) == 22


def test_device_keys_survive_saving_and_restoring() -> None:
    original = device()
    env = send(POOL[0], [original])
    restored = Device(original.id, DeviceKeys.from_private_bytes(original.keys.private_bytes()))
    assert read(env, restored, POOL[0]) == CANARY
    assert restored.keys.public_bundle() == original.keys.public_bundle()
    with pytest.raises(ValueError):
        DeviceKeys.from_private_bytes(b"x" * 63)


def test_public_bundle_holds_the_public_keys_only() -> None:
    keys = DeviceKeys.generate()
    bundle = keys.public_bundle()
    secret = keys.private_bytes()
    assert bundle.x25519_public == bytes(nacl.public.PrivateKey(secret[:32]).public_key)
    assert bundle.ed25519_public == bytes(nacl.signing.SigningKey(secret[32:]).verify_key)
    wire = bundle.to_json()
    assert set(wire) == {"x25519_public", "ed25519_public"}
    assert decode_b64url(wire["x25519_public"], field="e") == bundle.x25519_public
    assert decode_b64url(wire["ed25519_public"], field="s") == bundle.ed25519_public
    assert secret[:32] not in bundle.x25519_public + bundle.ed25519_public
    assert secret[32:] not in bundle.x25519_public + bundle.ed25519_public
    assert secret.hex()[:16] not in repr(keys)
    nacl.signing.VerifyKey(bundle.ed25519_public)  # a usable Ed25519 key
