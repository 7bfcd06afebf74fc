"""Client-side envelope crypto: device keys, sealing and opening messages.

This runs on a user's device (and in tests and the load generator). The
private keys in :class:`DeviceKeys` stay in this process; only
:meth:`DeviceKeys.public_bundle` is meant for the server. The format is
docs/protocol.md; the checks are :mod:`teleconsult.messaging.envelope`'s.

To retry a send, send the same :class:`Envelope` again: sealing again with
the same client message id gives different bytes (fresh key, nonce and
ephemeral keys), and the server keeps the first envelope it stored under
that id.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass, replace
from uuid import UUID

import nacl.exceptions
import nacl.public
import nacl.signing
import nacl.utils
from nacl import bindings

from teleconsult.messaging.envelope import (
    DEFAULT_MAX_BYTES,
    ENVELOPE_VERSION,
    MAX_RECIPIENTS,
    MESSAGE_KEY_BYTES,
    NONCE_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    Envelope,
    EnvelopeError,
    EnvelopeErrorCode,
    associated_data,
    associated_data_for,
    check_client_msg_id,
    encode_b64url,
    encoded_size,
    signing_bytes,
    too_many_recipients,
    verify_signature,
)

PRIVATE_BYTES = 64


def new_client_msg_id() -> str:
    """128 random bits as unpadded base64url: 22 characters."""
    return secrets.token_urlsafe(16)


@dataclass(frozen=True, slots=True)
class PublicBundle:
    """What a device registers with the server: its two public keys, nothing else."""

    x25519_public: bytes  # 32 bytes: others seal message keys to it
    ed25519_public: bytes  # 32 bytes: the server and others verify its envelopes

    def to_json(self) -> dict[str, str]:
        """The body of ``POST /api/v1/devices`` (without the optional ``label``)."""
        return {
            "x25519_public": encode_b64url(self.x25519_public),
            "ed25519_public": encode_b64url(self.ed25519_public),
        }


class DeviceKeys:
    """One device's private keys: X25519 for decryption, Ed25519 for signing.

    Store :meth:`private_bytes` only in the device's own protected storage.
    """

    __slots__ = ("_encryption", "_signing")

    def __init__(
        self, encryption: nacl.public.PrivateKey, signing: nacl.signing.SigningKey
    ) -> None:
        self._encryption = encryption
        self._signing = signing

    @classmethod
    def generate(cls) -> DeviceKeys:
        return cls(nacl.public.PrivateKey.generate(), nacl.signing.SigningKey.generate())

    @classmethod
    def from_private_bytes(cls, data: bytes) -> DeviceKeys:
        """Restore keys saved with :meth:`private_bytes`."""
        if not isinstance(data, bytes) or len(data) != PRIVATE_BYTES:
            raise ValueError(f"device keys are {PRIVATE_BYTES} bytes")
        return cls(nacl.public.PrivateKey(data[:32]), nacl.signing.SigningKey(data[32:]))

    def private_bytes(self) -> bytes:
        """The X25519 private key then the Ed25519 seed: 64 secret bytes."""
        return bytes(self._encryption) + bytes(self._signing)

    @property
    def encryption_public_key(self) -> bytes:
        return bytes(self._encryption.public_key)

    @property
    def signing_public_key(self) -> bytes:
        return bytes(self._signing.verify_key)

    def public_bundle(self) -> PublicBundle:
        return PublicBundle(self.encryption_public_key, self.signing_public_key)

    def __repr__(self) -> str:
        return f"DeviceKeys(signing_public_key={encode_b64url(self.signing_public_key)!r})"


def _recipients(
    recipients: Mapping[UUID, bytes], sender: DeviceKeys, sender_device_id: UUID
) -> dict[UUID, bytes]:
    everyone = dict(recipients)
    # The sender's own device is always a recipient: it must be able to read its history.
    if everyone.setdefault(sender_device_id, sender.encryption_public_key) != (
        sender.encryption_public_key
    ):
        raise EnvelopeError(
            EnvelopeErrorCode.BAD_FIELD,
            "the key given for the sender's own device is not its key",
            field="recipients",
        )
    if len(everyone) > MAX_RECIPIENTS:
        raise too_many_recipients(len(everyone), field="recipients")
    for device_id, public_key in everyone.items():
        if not isinstance(device_id, UUID):
            raise EnvelopeError(EnvelopeErrorCode.BAD_FIELD, "not a UUID", field="recipients")
        if not isinstance(public_key, bytes) or len(public_key) != PUBLIC_KEY_BYTES:
            raise EnvelopeError(
                EnvelopeErrorCode.BAD_FIELD,
                f"the X25519 key of device {device_id} is not {PUBLIC_KEY_BYTES} bytes",
                field="recipients",
            )
    return everyone


def _seal_key(message_key: bytes, device_id: UUID, public_key: bytes) -> bytes:
    try:
        return nacl.public.SealedBox(nacl.public.PublicKey(public_key)).encrypt(message_key)
    except nacl.exceptions.CryptoError:
        # libsodium refuses low-order points, whose shared secret would be predictable.
        raise EnvelopeError(
            EnvelopeErrorCode.BAD_FIELD,
            f"the X25519 key of device {device_id} is unusable",
            field="recipients",
        ) from None


def seal(
    *,
    plaintext: bytes,
    thread_id: UUID,
    sender: DeviceKeys,
    sender_device_id: UUID,
    recipients: Mapping[UUID, bytes],
    client_msg_id: str | None = None,
    sent_at_ms: int | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Envelope:
    """Encrypt ``plaintext`` once and seal its key for every device in ``recipients``.

    ``recipients`` maps device ids to X25519 public keys; the sender's own
    device is added if missing. ``too_large`` if the envelope would exceed
    ``max_bytes`` (the server's limit), so the caller learns before sending.
    """
    if not isinstance(plaintext, bytes):
        raise TypeError("plaintext must be bytes")
    if len(plaintext) > max_bytes:
        raise EnvelopeError(EnvelopeErrorCode.TOO_LARGE, f"the message is over {max_bytes} bytes")
    cmid = check_client_msg_id(new_client_msg_id() if client_msg_id is None else client_msg_id)
    everyone = _recipients(recipients, sender, sender_device_id)
    message_key = nacl.utils.random(MESSAGE_KEY_BYTES)
    nonce = nacl.utils.random(NONCE_BYTES)
    ad = associated_data_for(
        v=ENVELOPE_VERSION,
        thread_id=thread_id,
        sender_device_id=sender_device_id,
        client_msg_id=cmid,
    )
    unsigned = Envelope(
        v=ENVELOPE_VERSION,
        client_msg_id=cmid,
        thread_id=thread_id,
        sender_device_id=sender_device_id,
        sent_at_ms=sent_at_ms,
        nonce=nonce,
        ciphertext=bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            plaintext, ad, nonce, message_key
        ),
        keys=tuple(
            (device_id, _seal_key(message_key, device_id, public_key))
            for device_id, public_key in everyone.items()
        ),
        signature=bytes(SIGNATURE_BYTES),
    )
    signature = sender._signing.sign(signing_bytes(unsigned)).signature
    envelope = replace(unsigned, signature=signature)
    size = encoded_size(envelope)
    if size > max_bytes:
        raise EnvelopeError(
            EnvelopeErrorCode.TOO_LARGE, f"the envelope is {size} bytes, the limit is {max_bytes}"
        )
    return envelope


def open_envelope(
    env: Envelope, *, me: DeviceKeys, my_device_id: UUID, sender_signing_key: bytes
) -> bytes:
    """The plaintext of ``env``, after checking it was signed by ``sender_signing_key``.

    ``sender_signing_key`` is the Ed25519 key registered for
    ``env.sender_device_id``. Raises ``bad_signature``, ``not_a_recipient`` or
    ``decrypt_failed``.
    """
    verify_signature(env, sender_signing_key)
    sealed_key = env.sealed_key_for(my_device_id)
    if sealed_key is None:
        raise EnvelopeError(
            EnvelopeErrorCode.NOT_A_RECIPIENT,
            f"device {my_device_id} is not a recipient of this message",
            field="keys",
        )
    failed = EnvelopeError(
        EnvelopeErrorCode.DECRYPT_FAILED, "the message cannot be decrypted with this device's key"
    )
    try:
        message_key = nacl.public.SealedBox(me._encryption).decrypt(sealed_key)
    except nacl.exceptions.CryptoError:
        raise failed from None
    if len(message_key) != MESSAGE_KEY_BYTES:
        raise failed
    try:
        return bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
            env.ciphertext, associated_data(env), env.nonce, message_key
        )
    except nacl.exceptions.CryptoError:
        raise failed from None
