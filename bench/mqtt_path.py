"""Chat over MQTT: teleconsult's bridge (and its embedded broker) against Mosquitto alone.

Run: ``.venv/bin/python -m bench.mqtt_path [--rates 20,100] [--pairs 16] [--smoke]``.

``--pairs`` pairs of users, a device each (aiomqtt clients in this process, QoS 1,
persistent sessions); each message goes from one device to the other end of its
pair, round-robin. The broker and the server share the server core.

* ``mosquitto``: a private Mosquitto with a password file and the shipped
  ``deploy/mosquitto/acl`` (plus one pattern letting a user write another's inbox);
  a device publishes straight to the peer's ``tc/u/<user>/inbox`` a payload the size
  of a ``send`` request: the broker's ceiling for one hop;
* ``teleconsult-mosquitto``: the same Mosquitto with the shipped ACL, bridged by
  ``teleconsult serve`` (``MQTT_URL``): a device publishes ``send`` with a real
  sealed envelope to ``tc/u/<user>/req``; the server checks and stores it, pushes
  it to both members' inboxes and acks on ``/ack``;
* ``teleconsult-amqtt``: the same through the server's embedded amqtt broker.

Fixed rates (``--rates``, open loop), then the rate search of
``bench.harness.steps`` at the p99 budget. A delivery counts only at the
recipient (the sender gets its own copy too). ``srv`` is the server's CPU (for
``mosquitto``, the broker's) per delivered message, ``brk`` a broker process of
its own. Confirm steps: every message acked ok and delivered; for teleconsult one
envelope opened and verified by its recipient.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import nacl.signing
import paho.mqtt.client as paho

from bench.harness import report
from bench.harness.load import Progress, open_loop, say
from bench.harness.procs import HOST, REPO, ServerProcess, free_port
from bench.harness.report import Column, Row
from bench.harness.steps import STEP_HEAD, Deliveries, Step, fill, rate_row, score, search
from bench.harness.world import Lab, Pairs, index_of, msg_id, open_lab
from teleconsult.client.crypto import open_envelope
from teleconsult.messaging import mqtt_wire
from teleconsult.messaging.envelope import from_msgpack
from teleconsult.messaging.mqtt_broker import BRIDGE_USERNAME

TARGETS = ("mosquitto", "teleconsult-mosquitto", "teleconsult-amqtt")
COLUMNS = (
    Column("msg/s", "rate_text", ">8"),
    Column("p50 ms", "p50_ms", ">7.2f"),
    Column("p99 ms", "p99_ms", ">7.2f"),
    Column("max ms", "max_ms", ">7.2f"),
    Column("srv us/msg", "server_us", ">10.0f"),
    Column("brk us/msg", "broker_us", ">10.0f"),
)


def mosquitto(lab: Lab, passwords: dict[str, str], extra_acl: str, folder: Path) -> ServerProcess:
    """A private Mosquitto on the server core: password file, ACL, TCP_NODELAY."""
    exe, passwd = (
        shutil.which("mosquitto") or "/usr/sbin/mosquitto",
        shutil.which("mosquitto_passwd"),
    )
    if not Path(exe).exists() or passwd is None:
        raise RuntimeError("the MQTT benchmark needs mosquitto and mosquitto_passwd")
    port = free_port()
    (folder / "passwords").write_text("".join(f"{u}:{p}\n" for u, p in passwords.items()))
    (folder / "passwords").chmod(0o600)
    subprocess.run([passwd, "-U", str(folder / "passwords")], check=True, timeout=60)
    (folder / "acl").write_text((REPO / "deploy/mosquitto/acl").read_text() + extra_acl)
    conf = [
        f"listener {port} {HOST}",
        "allow_anonymous false",
        f"password_file {folder / 'passwords'}",
        f"acl_file {folder / 'acl'}",
        "persistence false",
        "log_dest stderr",
        "log_type error",
        "set_tcp_nodelay true",
        "user root",  # else, as root, it would switch to a user who cannot read this folder
    ]
    (folder / "mosquitto.conf").write_text("\n".join(conf) + "\n")
    command = [exe, "-c", str(folder / "mosquitto.conf")]
    return ServerProcess("mosquitto", command, {}, cpu=lab.server_cpu, port=port)


class Target:
    """A path under test: its processes, its devices, its messages."""

    next_index = 1  # message 0 is the bridge's readiness probe

    def __init__(self, lab: Lab, name: str, pairs: Pairs) -> None:
        self.lab, self.name, self.pairs, self.args = lab, name, pairs, lab.args
        self.tc = name.startswith("teleconsult")
        self.users = [str(p.user_id) for p in pairs.people]
        self.passwords = {u: secrets.token_hex(16) for u in self.users}
        self.folder = tempfile.TemporaryDirectory(prefix="bench-mqtt-")
        self.broker: ServerProcess | None = None
        self.server: ServerProcess | None = None
        self.port = 0
        self.links: list[aiomqtt.Client] = []
        self.stack = contextlib.AsyncExitStack()
        self.current: Deliveries | None = None
        self.frames: list[tuple[int, bytes]] = []  # for the check: (link, payload)
        self.padding = b""
        self.bridged = asyncio.Event()  # the bridge answered the probe (message 0)

    async def start(self) -> None:
        folder = Path(self.folder.name)
        if self.name == "mosquitto":
            self.broker = mosquitto(
                self.lab, self.passwords, "pattern write tc/u/+/inbox\n", folder
            )
        elif self.name == "teleconsult-mosquitto":
            bridge = secrets.token_hex(16)
            accounts = {BRIDGE_USERNAME: bridge, **self.passwords}
            self.broker = mosquitto(self.lab, accounts, "", folder)
            url = f"mqtt://{BRIDGE_USERNAME}:{bridge}@{HOST}:{self.broker.port}"
            self.server = self.lab.teleconsult(self.name, MQTT_URL=url)
        else:
            self.port = free_port()
            self.server = self.lab.teleconsult(
                self.name, MQTT_EMBEDDED_PORT=str(self.port), MQTT_EMBEDDED_HOST=HOST
            )
            self.passwords = {
                p: t.token for p, t in zip(self.users, self.pairs.people, strict=True)
            }
        if self.broker is not None:
            await self.broker.wait_port()
            self.port = self.broker.port
        if self.server is not None:
            await self.server.wait_http("/readyz")
        await asyncio.wait_for(self._connect_all(), 60)

    async def _connect_all(self) -> None:
        while True:
            try:
                self.links = [await self._device(k) for k in range(len(self.users))]
                return
            except aiomqtt.MqttError:  # the embedded broker may still be starting
                await self.stack.aclose()
                self.stack = contextlib.AsyncExitStack()
                await asyncio.sleep(0.2)

    async def _device(self, k: int) -> aiomqtt.Client:
        user = self.users[k]
        client = aiomqtt.Client(
            HOST,
            self.port,
            username=user,
            password=self.passwords[user],
            identifier=f"{user}-bench",
            clean_session=False,
            max_inflight_messages=100,
        )
        await self.stack.enter_async_context(client)
        raw: paho.Client = client._client
        uid = self.pairs.people[k].user_id
        raw.message_callback_add(mqtt_wire.inbox_topic(uid), self._taker(k))
        topics = [(mqtt_wire.inbox_topic(uid), 1)]
        if self.tc:
            raw.message_callback_add(mqtt_wire.ack_topic(uid), self._acker)
            topics.append((mqtt_wire.ack_topic(uid), 1))
        await client.subscribe(topics)
        return client

    def _taker(self, k: int) -> Any:
        def take(_c: Any, _u: Any, message: paho.MQTTMessage) -> None:
            payload = bytes(message.payload)
            self.frames.append((k, payload))
            if self.tc:
                index = index_of(mqtt_wire.decode(payload)["data"].get("client_msg_id"))
            else:
                index = int.from_bytes(payload[:8], "big")
            # The recipient's copy only: the server pushes the sender its own as well.
            if index is not None and self.current is not None and index % len(self.links) == k ^ 1:
                self.current.deliver(index)

        return take

    def _acker(self, _c: Any, _u: Any, message: paho.MQTTMessage) -> None:
        frame = mqtt_wire.decode(bytes(message.payload))
        index, ack = index_of(frame.get("id")), frame.get("ack") or {}
        if index == 0:
            self.bridged.set()
        elif index is not None and self.current is not None:
            error = None if ack.get("ok") else str((ack.get("error") or {}).get("code", "bad_ack"))
            self.current.ack(index, error)

    def message(self, index: int, sender: int | None = None) -> tuple[int, str, bytes]:
        """(sending link, topic, payload) of message ``index``."""
        sender = index % len(self.users) if sender is None else sender
        peer = self.pairs.people[sender ^ 1].user_id
        if not self.tc:
            return sender, mqtt_wire.inbox_topic(peer), index.to_bytes(8, "big") + self.padding
        thread, sealed = self.pairs.envelope(sender, b"x" * self.args.body, index)
        data = {"thread_id": str(thread), "envelope": sealed}
        payload = signed_request(self.pairs, sender, msg_id(index), "send", data)
        return sender, mqtt_wire.request_topic(self.pairs.people[sender].user_id), payload

    def publish(self, sender: int, topic: str, payload: bytes) -> None:
        rc = self.links[sender]._client.publish(topic, payload, qos=1).rc
        if rc and self.current is not None:
            self.current.errors[f"publish_rc_{rc}"] += 1

    async def step(self, rate: float, seconds: float, kind: str) -> Step:
        args = self.args
        count = int((args.warmup + seconds) * rate) + 2
        base, Target.next_index = Target.next_index, Target.next_index + count
        out = [self.message(base + j) for j in range(count)]
        d = self.current = Deliveries(
            base, count, args.budget_ms / 1e3, first=math.ceil(args.warmup * rate), acks=self.tc
        )

        def send(j: int, due: float) -> None:
            d.send(j, due)
            self.publish(*out[j])

        meter = self.meter()
        stop = (lambda: d.hopeless(int(rate * seconds))) if kind == "search" else None
        plan = await open_loop(rate, seconds, args.warmup, send, meter=meter, stop=stop)
        await d.drain(args.drain)
        for proc in (self.broker, self.server):
            if proc is not None:
                proc.check_alive()
        return score(self.name, kind, d, plan)

    def meter(self) -> Any:
        extra = {"broker": self.broker} if self.broker and self.server else {}
        return self.lab.meter(self.server or self.broker, **extra)

    async def verify_one(self) -> bool:
        """Device 0 sends; device 1 opens and verifies what its inbox got (after the bridge
        answers a probe: it subscribes once started)."""
        uid = self.pairs.people[0].user_id
        probe = signed_request(self.pairs, 0, msg_id(0), "resume", {"threads": {}})
        for _ in range(30):
            self.publish(0, mqtt_wire.request_topic(uid), probe)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.bridged.wait(), 1.0)
                break
        index, Target.next_index = Target.next_index, Target.next_index + 1
        self.frames.clear()
        self.publish(*self.message(index, sender=0))
        for _ in range(100):
            await asyncio.sleep(0.1)
            got = [p for k, p in self.frames if k == 1]
            if got:
                data = mqtt_wire.decode(got[0])["data"]
                raw = data["envelope"]
                plain = open_envelope(
                    from_msgpack(raw, max_bytes=len(raw)),
                    me=self.pairs.devices[1].keys,
                    my_device_id=self.pairs.devices[1].id,
                    sender_signing_key=self.pairs.devices[0].keys.signing_public_key,
                )
                return bool(plain == b"x" * self.args.body)
        return False

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.stack.aclose()
        for proc in (self.server, self.broker):
            if proc is not None:
                proc.stop()
        self.folder.cleanup()


async def bench_target(
    lab: Lab, name: str, pairs: Pairs, size: int
) -> tuple[list[Row], Row, list[Step]]:
    args = lab.args
    await lab.quiet()
    target = Target(lab, name, pairs)
    target.padding = secrets.token_bytes(max(0, size - 8))
    try:
        await target.start()
        say(f"[{name}] {len(target.links)} devices connected")
        verified = await target.verify_one() if target.tc else None
        say(STEP_HEAD)
        async with Progress(name, lambda: f"sent {target.current.sent if target.current else 0}"):
            fixed = [await target.step(rate, args.duration, "fixed") for rate in args.rates]
            tried, confirm = await search(
                target.step,
                start=args.start_rate,
                resolution=0.15,
                max_steps=args.max_steps,
                step_seconds=args.step,
                confirm_seconds=args.confirm,
            )
    finally:
        await target.close()
    rows = []
    for step in fixed:
        rows.append(Row(f"{name} @{step.rate:.0f}/s"))
        fill(rows[-1], step)
    row = rate_row(name, tried, confirm, args.budget_ms)
    if verified is not None:
        row.check("one envelope opened and verified by its recipient", verified)
    for r in [*rows, row]:
        r.judge()
    return rows, row, fixed + tried + ([confirm] if confirm else [])


def signed_request(pairs: Pairs, sender: int, request_id: str, event: str, data: Any) -> bytes:
    """A request as a device sends it: its frame signed with the device's Ed25519 key."""
    device = pairs.devices[sender]
    frame = mqtt_wire.request_frame(
        request_id, event, data, "msgpack", device=device.id, ts=int(time.time() * 1000)
    )
    key = nacl.signing.SigningKey(device.keys.private_bytes()[32:])
    signature = key.sign(mqtt_wire.signing_bytes(pairs.people[sender].user_id, frame)).signature
    return mqtt_wire.signed_request(frame, signature, "msgpack")


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with open_lab("mqtt", args) as lab:
        pairs = await lab.pairs(args.pairs)
        thread, sealed = pairs.envelope(0, b"x" * args.body, 0)
        data = {"thread_id": str(thread), "envelope": sealed}
        sample = signed_request(pairs, 0, msg_id(0), "send", data)
        fixed: list[Row] = []
        best: list[Row] = []
        steps: list[Step] = []
        for name in args.targets:
            rows, row, tried = await bench_target(lab, name, pairs, len(sample))
            fixed += rows
            best.append(row)
            steps += tried
        found, ratio_text = report.ratios(
            best, "rate", ["mosquitto"], higher_is_better=True, what="rate at the budget"
        )
        text = [
            f"{args.pairs} pairs, QoS 1, {len(sample)}-byte send requests; fixed rates:",
            report.table(fixed, COLUMNS),
            f"\nhighest rate with p99 <= {args.budget_ms:g} ms:",
            report.table(best, COLUMNS),
            ratio_text,
            "\nsteps:\n" + STEP_HEAD,
            *(s.line() for s in steps),
            "",
            report.cpu_table(fixed + best),
        ]
        doc = "\n".join(t for t in text if t)
        more = {"ratios": found, "steps": [s.json() for s in steps]}
        return report.document("mqtt_path", args, lab.facts, fixed + best, doc, **more)


def rates(text: str) -> list[float]:
    return [report.positive(part) for part in text.split(",")]


def main(argv: list[str] | None = None) -> int:
    p = report.parser("bench.mqtt_path", __doc__, TARGETS, TARGETS)
    p.add_argument("--rates", type=rates, default=[20.0, 100.0], help="fixed rates, msg/s")
    p.add_argument("--duration", type=report.positive, default=4.0, help="fixed-rate window, s")
    p.add_argument("--budget-ms", type=report.positive, default=50.0, help="p99 budget")
    p.add_argument("--pairs", type=int, default=16, help="pairs of users, a device each")
    p.add_argument("--body", type=int, default=100, help="plaintext bytes per message")
    p.add_argument("--start-rate", type=report.positive, default=100.0, help="search from")
    p.add_argument("--max-steps", type=int, default=12, help="search steps per target")
    p.add_argument("--step", type=report.positive, default=1.5, help="measured s per step")
    p.add_argument("--confirm", type=report.positive, default=3.0, help="measured s, confirm")
    p.add_argument("--warmup", type=float, default=0.5, help="unmeasured s per run")
    p.add_argument("--drain", type=report.positive, default=3.0, help="wait for stragglers")
    args = p.parse_args(argv)
    if args.smoke:
        args.pairs, args.rates, args.duration, args.max_steps = 1, [10.0], 0.4, 1
        args.start_rate, args.step, args.confirm, args.warmup = 10.0, 0.4, 0.4, 0.1
        args.budget_ms = 60_000.0  # behaviour, never speed
    return report.main(lambda: run(args), args)


if __name__ == "__main__":
    sys.exit(main())
