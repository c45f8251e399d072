#!/usr/bin/env python3
"""Protocol v1 (stratus.v1) end to end from outside Rust: Python's `websockets` client
against the real `stratus` binary.

Starts `stratus serve` on loopback (ports chosen by the kernel, read back from its JSON
log), with a history, client publishing for subscribers and a few namespaces from a
config file, then checks over the wire: the subprotocol negotiation, replies that echo
command ids, publications from the admin API (JSON embedded as a value, text as a
string, binary frames with their topic header), client publishes, the history command,
resuming with `since` after a disconnect (and the gap notices when the history cannot
cover it), and the error codes. Every wait is bounded; the server is stopped with
SIGTERM at the end and must exit cleanly.

Usage: STRATUS_BIN=path/to/stratus python3 test_v1.py   (scripts/interop.sh sets it up;
without STRATUS_BIN, the repository's target/debug/stratus). Needs `websockets`
(interop/python/requirements.txt).
"""

import asyncio
import base64
import collections
import http.client
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path
from urllib.parse import quote

from websockets.asyncio.client import connect

REPO = Path(__file__).resolve().parents[2]
BINARY = Path(os.environ.get("STRATUS_BIN") or REPO / "target" / "debug" / "stratus").absolute()
# Longest any one wait may take (a frame, a reply, an HTTP answer), and the server's
# start and stop.
STEP = 10.0
START = 20.0
STOP = 20.0

SUBPROTOCOL = "stratus.v1"
OFFSET = re.compile(r"^\d+-\d+$")
# Namespaces over the flags' defaults (--history 100 --client-publish subscribers).
CONFIG = """\
[namespace."live:"]
history = 0

[namespace."short:"]
history = 2

[namespace."ro:"]
publish = "off"

[namespace."small:"]
max-message = 16

[namespace."solo:"]
max-subscribers = 1
"""


def offset_key(offset):
    """An offset `<ms>-<seq>` as a tuple that orders as offsets do."""
    ms, seq = offset.split("-")
    return int(ms), int(seq)


def parse_binary(frame):
    """A binary push: 0x01, then topic, offset and key, each a length byte and its bytes
    (length 0: none), then the payload. Returns (topic, offset, key, payload)."""
    if not frame or frame[0] != 0x01:
        raise ValueError(f"not a binary publication: {frame[:8]!r}")
    fields, at = [], 1
    for name in ("topic", "offset", "key"):
        if at >= len(frame):
            raise ValueError(f"binary publication cut before its {name}: {frame!r}")
        length = frame[at]
        if at + 1 + length > len(frame):
            raise ValueError(f"binary publication's {name} runs past the frame: {frame!r}")
        fields.append(frame[at + 1 : at + 1 + length].decode() if length else None)
        at += 1 + length
    topic, offset, key = fields
    return topic, offset, key, frame[at:]


class Server:
    """`stratus serve` on loopback ports the kernel picks, its log in a temporary file."""

    def __init__(self):
        self.process = self.dir = self.log_path = None
        self.ws = self.admin = None

    def log_tail(self, lines=30):
        if self.log_path is None:
            return "(no log)"
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(empty log)"

    def listening(self):
        """The WebSocket and admin addresses once the server has logged them."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return None
        for line in text.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            fields = entry.get("fields") if isinstance(entry, dict) else None
            if isinstance(fields, dict) and fields.get("message") == "listening":
                addr = lambda v: (re.search(r"127\.0\.0\.1:\d+", str(v)) or [None])[0]
                return addr(fields.get("local_addr")), addr(fields.get("admin_addr"))
        return None

    def start(self):
        if not BINARY.is_file() or not os.access(BINARY, os.X_OK):
            raise RuntimeError(
                f"no stratus binary at {BINARY}: build it with "
                "`cargo build -p stratus-server --bin stratus`, or set STRATUS_BIN"
            )
        self.dir = tempfile.TemporaryDirectory(prefix="stratus-interop-")
        self.log_path = Path(self.dir.name) / "stratus.log"
        config = Path(self.dir.name) / "stratus.toml"
        config.write_text(CONFIG)
        args = [
            str(BINARY), "serve",
            "--config", str(config),
            "--listen", "127.0.0.1:0",
            "--admin-listen", "127.0.0.1:0",
            "--workers", "2",
            "--log-format", "json",
            "--history", "100",
            "--client-publish", "subscribers",
            "--client-publish-rate", "1000",
        ]
        # The server reads STRATUS_* settings from the environment: none of the caller's.
        env = {k: v for k, v in os.environ.items() if not k.startswith("STRATUS_")}
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=env, cwd=self.dir.name,
            )
        deadline = time.monotonic() + START
        while (addrs := self.listening()) is None:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"{BINARY} exited with {self.process.returncode} before listening:\n"
                    + self.log_tail()
                )
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"{BINARY} did not log 'listening' within {START:.0f} s:\n" + self.log_tail()
                )
            time.sleep(0.05)
        self.ws, self.admin = addrs
        if not self.ws or not self.admin:
            raise RuntimeError(f"addresses not found in the 'listening' line: {addrs}")
        status, body = http_request(self.admin, "GET", "/healthz")
        if status != 200:
            raise RuntimeError(f"GET /healthz answered {status}: {body}")

    def stop(self):
        """SIGTERM; a server that started must be gone, with exit status 0, within STOP
        seconds (one that did not start was reported by `start`, and is only ended)."""
        started = self.ws is not None
        try:
            if self.process is None:
                return
            if self.process.poll() is not None:
                if started:
                    raise RuntimeError(
                        f"the server exited with {self.process.returncode} during the tests:\n"
                        + self.log_tail()
                    )
                return
            self.process.send_signal(signal.SIGTERM)
            try:
                code = self.process.wait(timeout=STOP)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=STEP)
                if started:
                    raise RuntimeError(
                        f"the server was still running {STOP:.0f} s after SIGTERM (killed):\n"
                        + self.log_tail()
                    ) from None
                return
            if started and code != 0:
                raise RuntimeError(f"the server exited with {code} on SIGTERM:\n" + self.log_tail())
        finally:
            if self.dir is not None:
                self.dir.cleanup()


SERVER = Server()


def setUpModule():
    # Registered first: it runs even when the start fails.
    unittest.addModuleCleanup(SERVER.stop)
    SERVER.start()


def http_request(addr, method, path, body=None, content_type=None):
    """One request to the admin API (straight to loopback, no proxy): (status, JSON)."""
    host, port = addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=STEP)
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        raw = response.read()
        try:
            return response.status, json.loads(raw)
        except ValueError:
            return response.status, raw.decode(errors="replace")
    finally:
        conn.close()


class Client:
    """A WebSocket connection to the server. Frames come as dicts (text, parsed as JSON)
    or bytes (binary); frames read while waiting for a command's answer are held, in
    order, for `receive`."""

    def __init__(self, ws):
        self.ws = ws
        self.held = collections.deque()
        self.last_id = 0

    async def _read(self):
        frame = await asyncio.wait_for(self.ws.recv(), STEP)
        return json.loads(frame) if isinstance(frame, str) else frame

    async def receive(self):
        """The next frame (held ones first)."""
        if self.held:
            return self.held.popleft()
        return await self._read()

    async def send(self, message):
        """Sends a dict as JSON, a str as it is (text), bytes as a binary frame."""
        if isinstance(message, dict):
            message = json.dumps(message)
        await asyncio.wait_for(self.ws.send(message), STEP)

    async def answer(self, command_id):
        """The reply or error to command `command_id`; pushes before it are held."""
        for frame in self.held:
            if isinstance(frame, dict) and frame.get("type") in ("reply", "error") \
                    and frame.get("id") == command_id:
                self.held.remove(frame)
                return frame
        while True:
            frame = await self._read()
            if isinstance(frame, dict) and frame.get("type") in ("reply", "error") \
                    and frame.get("id") == command_id:
                return frame
            self.held.append(frame)

    async def command(self, op, **fields):
        """Sends command `op` with the next numeric id; returns its reply or error."""
        self.last_id += 1
        await self.send({"id": self.last_id, "op": op, **fields})
        return await self.answer(self.last_id)

    async def subscribe(self, topic, **fields):
        return await self.command("subscribe", topic=topic, **fields)


class V1TestCase(unittest.IsolatedAsyncioTestCase):
    """Opens clients on the shared server and closes them after each test."""

    async def asyncSetUp(self):
        self.clients = []
        self.topic_count = 0

    async def asyncTearDown(self):
        for client in self.clients:
            await asyncio.wait_for(client.ws.close(), STEP)

    def topic(self, prefix=""):
        """A topic of this test's own (under `prefix`, a namespace)."""
        self.topic_count += 1
        return f"{prefix}{self._testMethodName}.{self.topic_count}"

    async def open(self, protocols=(SUBPROTOCOL,), query="", compression="deflate"):
        ws = await asyncio.wait_for(
            connect(
                f"ws://{SERVER.ws}/ws{query}",
                subprotocols=list(protocols) or None,
                compression=compression,
                proxy=None,
                open_timeout=STEP,
                close_timeout=STEP,
            ),
            STEP,
        )
        client = Client(ws)
        self.clients.append(client)
        return client

    async def admin(self, method, path, body=None, content_type=None):
        return await asyncio.wait_for(
            asyncio.to_thread(http_request, SERVER.admin, method, path, body, content_type),
            STEP + 1,
        )

    async def publish(self, topic, body, content_type, key=None, recipients=None):
        """POST /publish/{topic}; asserts 200 (and the recipients, if given); the
        response's JSON."""
        # Topic characters are all valid in a path as they are; the server takes the
        # path's bytes as the topic (it does not percent-decode them).
        path = f"/publish/{quote(topic, safe='-_.:/')}"
        if key is not None:
            path += f"?key={quote(key, safe='')}"
        if isinstance(body, str):
            body = body.encode()
        status, response = await self.admin("POST", path, body, content_type)
        self.assertEqual(status, 200, f"POST {path} answered {status}: {response}")
        if recipients is not None:
            self.assertEqual(response["recipients"], recipients, response)
        return response

    async def publish_json(self, topic, value, **kw):
        return await self.publish(topic, json.dumps(value), "application/json", **kw)

    async def assert_nothing_more(self, client):
        """A ping's reply is the next frame: nothing else was queued before it."""
        reply = await client.command("ping")
        self.assertEqual(reply["type"], "reply", reply)
        self.assertEqual(list(client.held), [], "frames came that were not expected")

    def assert_reply(self, reply, command_id, op, topic=None, **fields):
        expected = {"type": "reply", "id": command_id, "op": op}
        if topic is not None:
            expected["topic"] = topic
        expected.update(fields)
        self.assertEqual(reply, expected)

    def assert_error(self, error, code, command_id, op, topic):
        self.assertEqual(error.get("type"), "error", error)
        self.assertEqual(error.get("code"), code, error)
        self.assertEqual(
            (error.get("id"), error.get("op"), error.get("topic")), (command_id, op, topic), error
        )
        self.assertIsInstance(error.get("message"), str, error)
        self.assertTrue(error["message"], error)


class Negotiation(V1TestCase):
    async def test_the_server_answers_the_stratus_v1_subprotocol(self):
        client = await self.open()
        self.assertEqual(client.ws.subprotocol, SUBPROTOCOL)
        self.assertEqual(client.ws.response.headers.get("Sec-WebSocket-Protocol"), SUBPROTOCOL)
        self.assert_reply(await client.command("ping"), 1, "ping")

    async def test_v1_is_chosen_over_raw_mode_when_both_are_offered(self):
        client = await self.open(protocols=("stratus", SUBPROTOCOL))
        self.assertEqual(client.ws.subprotocol, SUBPROTOCOL)

    async def test_publications_arrive_intact_with_and_without_permessage_deflate(self):
        deflated, plain = await self.open(), await self.open(compression=None)
        self.assertIn(
            "permessage-deflate", deflated.ws.response.headers.get("Sec-WebSocket-Extensions", "")
        )
        self.assertIsNone(plain.ws.response.headers.get("Sec-WebSocket-Extensions"))
        topic = self.topic()
        # Large enough to be compressed (past the server's 64-byte threshold), both ways.
        value = {"rows": [{"n": i, "label": "row " * 8} for i in range(200)]}
        await deflated.subscribe(topic)
        await plain.subscribe(topic)
        reply = await deflated.command("publish", topic=topic, data=value)
        self.assertEqual(reply["type"], "reply", reply)
        pub = {"type": "pub", "topic": topic, "data": value, "offset": reply["offset"]}
        self.assertEqual(await deflated.receive(), pub)
        self.assertEqual(await plain.receive(), pub)

    async def test_without_v1_the_same_publication_comes_bare_in_raw_mode(self):
        topic = self.topic("live:")
        raw = await self.open(protocols=(), query=f"?topic={topic}")
        self.assertIsNone(raw.ws.subprotocol)
        v1 = await self.open(query=f"?topic={topic}")
        # Topics asked for at the upgrade need no command (nor get a reply); a command
        # answered on each connection shows the upgrade has been taken in.
        await raw.send({"op": "subscribe", "topic": topic})
        self.assertEqual(await raw.receive(), {"op": "subscribe", "topic": topic, "ok": True})
        self.assert_reply(await v1.command("ping"), 1, "ping")
        await self.publish(topic, "hello", "text/plain", recipients=2)
        self.assertEqual(await raw.ws.recv(), "hello")
        self.assertEqual(await v1.receive(), {"type": "pub", "topic": topic, "data": "hello"})


class Commands(V1TestCase):
    async def test_ping_replies_echo_numeric_and_string_ids(self):
        client = await self.open()
        await client.send({"id": 41, "op": "ping"})
        await client.send({"id": "req-7", "op": "ping"})
        self.assert_reply(await client.receive(), 41, "ping")
        self.assert_reply(await client.receive(), "req-7", "ping")

    async def test_subscribe_replies_carry_the_id_and_where_the_subscription_starts(self):
        client = await self.open()
        history, live = self.topic(), self.topic("live:")
        self.assert_reply(
            await client.subscribe(history), 1, "subscribe", history,
            offset="0-0", recovering=False,
        )
        self.assert_reply(
            await client.subscribe(live), 2, "subscribe", live, offset=None, recovering=False
        )
        # Subscribing again is idempotent: a reply, and still one delivery.
        reply = await client.subscribe(live)
        self.assertEqual((reply["type"], reply["id"]), ("reply", 3), reply)
        await self.publish(live, "once", "text/plain", recipients=1)
        self.assertEqual(await client.receive(), {"type": "pub", "topic": live, "data": "once"})
        await self.assert_nothing_more(client)

    async def test_unsubscribe_replies_and_stops_the_pushes(self):
        client = await self.open()
        topic = self.topic()
        await client.subscribe(topic)
        self.assert_reply(await client.command("unsubscribe", topic=topic), 2, "unsubscribe", topic)
        await self.publish(topic, "after", "text/plain", recipients=0)
        await self.assert_nothing_more(client)


class AdminPublish(V1TestCase):
    async def test_json_is_embedded_as_a_value_with_its_offset(self):
        client = await self.open()
        topic = self.topic()
        await client.subscribe(topic)
        value = {"price": 1.5, "tags": ["a", "b"], "nested": {"ok": True}, "none": None}
        response = await self.publish_json(topic, value, recipients=1)
        self.assertRegex(response["offset"], OFFSET)
        frame = await asyncio.wait_for(client.ws.recv(), STEP)
        self.assertIsInstance(frame, str, "JSON publications come in text frames")
        self.assertEqual(
            json.loads(frame),
            {"type": "pub", "topic": topic, "data": value, "offset": response["offset"]},
        )
        # Any JSON value, not only objects; a key rides along.
        response = await self.publish_json(topic, [1, "two", None], key="k1", recipients=1)
        self.assertEqual(
            await client.receive(),
            {"type": "pub", "topic": topic, "data": [1, "two", None],
             "offset": response["offset"], "key": "k1"},
        )

    async def test_text_comes_as_a_string(self):
        client = await self.open()
        topic = self.topic("live:")
        await client.subscribe(topic)
        text = 'say "hi"\n{not json} \u20ac'
        response = await self.publish(topic, text, "text/plain; charset=utf-8", recipients=1)
        self.assertNotIn("offset", response, "a topic without history has no offsets")
        self.assertEqual(await client.receive(), {"type": "pub", "topic": topic, "data": text})
        # A JSON content type with a body that is not JSON is published as text.
        await self.publish(topic, "{not json", "application/json", recipients=1)
        self.assertEqual(
            await client.receive(), {"type": "pub", "topic": topic, "data": "{not json"}
        )

    async def test_binary_comes_in_a_binary_frame_with_a_topic_header(self):
        client = await self.open()
        topic, live = self.topic(), self.topic("live:")
        await client.subscribe(topic)
        await client.subscribe(live)
        payload = b"\x00\x01\x02\xff binary \x80"
        response = await self.publish(
            topic, payload, "application/octet-stream", key="kb", recipients=1
        )
        frame = await client.receive()
        self.assertIsInstance(frame, bytes)
        self.assertEqual(frame[0], 0x01)
        self.assertEqual(parse_binary(frame), (topic, response["offset"], "kb", payload))
        # No history, no key: both fields have length 0.
        await self.publish(live, payload, "application/octet-stream", recipients=1)
        frame = await client.receive()
        self.assertEqual(parse_binary(frame), (live, None, None, payload))
        header = b"\x01" + bytes([len(live)]) + live.encode() + b"\x00\x00"
        self.assertEqual(frame, header + payload)


class ClientPublish(V1TestCase):
    async def test_a_publish_reaches_the_other_subscriber_and_is_answered_with_its_offset(self):
        alice, bob = await self.open(), await self.open()
        topic = self.topic()
        await alice.subscribe(topic)
        await bob.subscribe(topic)
        data = {"n": 1, "from": "alice"}
        reply = await alice.command("publish", topic=topic, data=data)
        self.assertEqual(set(reply), {"type", "id", "op", "topic", "offset"}, reply)
        self.assert_reply(reply, 2, "publish", topic, offset=reply["offset"])
        self.assertRegex(reply["offset"], OFFSET)
        pub = {"type": "pub", "topic": topic, "data": data, "offset": reply["offset"]}
        self.assertEqual(await bob.receive(), pub)
        # The publisher is a subscriber too: its own publication comes back to it.
        self.assertEqual(await alice.receive(), pub)

        reply2 = await bob.command("publish", topic=topic, text="plain words", key="k")
        self.assert_reply(reply2, 2, "publish", topic, offset=reply2["offset"])
        self.assertGreater(offset_key(reply2["offset"]), offset_key(reply["offset"]))
        pub = {"type": "pub", "topic": topic, "data": "plain words",
               "offset": reply2["offset"], "key": "k"}
        self.assertEqual(await alice.receive(), pub)
        self.assertEqual(await bob.receive(), pub)
        await self.assert_nothing_more(alice)
        await self.assert_nothing_more(bob)

    async def test_a_publish_on_a_topic_without_history_is_answered_with_no_offset(self):
        alice, bob = await self.open(), await self.open()
        topic = self.topic("live:")
        await alice.subscribe(topic)
        await bob.subscribe(topic)
        reply = await alice.command("publish", topic=topic, data=True)
        self.assert_reply(reply, 2, "publish", topic, offset=None)
        self.assertEqual(await bob.receive(), {"type": "pub", "topic": topic, "data": True})

    async def test_publishing_to_a_topic_not_subscribed_is_forbidden(self):
        outsider, member = await self.open(), await self.open()
        topic = self.topic()
        await member.subscribe(topic)
        error = await outsider.command("publish", topic=topic, data={"x": 1})
        self.assert_error(error, "forbidden", 1, "publish", topic)
        await self.assert_nothing_more(member)

    async def test_a_namespace_with_publishing_off_forbids_even_subscribers(self):
        client = await self.open()
        topic = self.topic("ro:")
        await client.subscribe(topic)
        error = await client.command("publish", topic=topic, text="no")
        self.assert_error(error, "forbidden", 2, "publish", topic)

    async def test_a_publication_over_the_namespace_size_is_too_large(self):
        client = await self.open()
        topic = self.topic("small:")
        await client.subscribe(topic)
        error = await client.command("publish", topic=topic, text="x" * 17)
        self.assert_error(error, "too_large", 2, "publish", topic)
        reply = await client.command("publish", topic=topic, text="x" * 16)
        self.assertEqual((reply["type"], reply["id"]), ("reply", 3), reply)
        pub = await client.receive()
        self.assertEqual((pub["type"], pub["data"]), ("pub", "x" * 16), pub)


class History(V1TestCase):
    async def test_the_history_command_pages_in_order(self):
        topic = self.topic()
        values = [{"i": 0}, "one", b"\x02two"]
        offsets = [
            (await self.publish_json(topic, values[0], recipients=0))["offset"],
            (await self.publish(topic, values[1], "text/plain", key="k", recipients=0))["offset"],
            (await self.publish(topic, values[2], "application/octet-stream"))["offset"],
        ]
        self.assertEqual(offsets, sorted(offsets, key=offset_key))
        expected = [
            {"data": {"i": 0}, "offset": offsets[0]},
            {"data": "one", "offset": offsets[1], "key": "k"},
            {"data": base64.b64encode(b"\x02two").decode(), "encoding": "base64",
             "offset": offsets[2]},
        ]
        client = await self.open()
        self.assert_reply(
            await client.command("history", topic=topic, limit=2), 1, "history", topic,
            publications=expected[:2], gap=None, more=True,
        )
        self.assert_reply(
            await client.command("history", topic=topic, since=offsets[1]), 2, "history",
            topic, publications=expected[2:], gap=None, more=False,
        )
        # Reading the history subscribes to nothing.
        await self.publish(topic, "later", "text/plain", recipients=0)
        await self.assert_nothing_more(client)
        # GET /history answers the same.
        status, page = await self.admin("GET", f"/history/{topic}?limit=10")
        self.assertEqual(status, 200, page)
        self.assertEqual(page["publications"][:3], expected)
        self.assertEqual(page["topic"], topic)

    async def test_subscribing_from_now_replays_nothing(self):
        topic = self.topic()
        last = (await self.publish(topic, "old", "text/plain", recipients=0))["offset"]
        client = await self.open()
        self.assert_reply(
            await client.subscribe(topic, since="$"), 1, "subscribe", topic,
            offset=last, recovering=False,
        )
        response = await self.publish(topic, "new", "text/plain", recipients=1)
        self.assertEqual(
            await client.receive(),
            {"type": "pub", "topic": topic, "data": "new", "offset": response["offset"]},
        )
        await self.assert_nothing_more(client)


class Resume(V1TestCase):
    async def missed_while_away(self, topic, count):
        """Subscribes, takes one publication, disconnects; `count` are published while
        away. Returns the last offset seen and the missed publications."""
        first = await self.open()
        await first.subscribe(topic)
        seen = (await self.publish(topic, "m0", "text/plain", recipients=1))["offset"]
        self.assertEqual(
            await first.receive(), {"type": "pub", "topic": topic, "data": "m0", "offset": seen}
        )
        await asyncio.wait_for(first.ws.close(), STEP)
        missed = []
        for i in range(1, count + 1):
            response = await self.publish(topic, f"m{i}", "text/plain", recipients=0)
            missed.append({"type": "pub", "topic": topic, "data": f"m{i}",
                           "offset": response["offset"]})
        return seen, missed

    async def test_what_was_missed_arrives_once_in_order_then_live(self):
        topic = self.topic()
        seen, missed = await self.missed_while_away(topic, 3)
        client = await self.open()
        self.assert_reply(
            await client.subscribe(topic, since=seen), 1, "subscribe", topic,
            offset=seen, recovering=True,
        )
        for expected in missed:
            self.assertEqual(await client.receive(), expected)
        response = await self.publish(topic, "live", "text/plain", recipients=1)
        self.assertEqual(
            await client.receive(),
            {"type": "pub", "topic": topic, "data": "live", "offset": response["offset"]},
        )
        await self.assert_nothing_more(client)

    async def test_a_publish_racing_the_replay_still_arrives_once_in_order(self):
        topic = self.topic()
        seen, missed = await self.missed_while_away(topic, 5)
        client = await self.open()
        # The live publish goes out while the subscribe's history read may be under way.
        await client.send({"id": 1, "op": "subscribe", "topic": topic, "since": seen})
        response = await self.publish(topic, "racing", "text/plain")
        expected = missed + [{"type": "pub", "topic": topic, "data": "racing",
                              "offset": response["offset"]}]
        reply = await client.answer(1)
        self.assert_reply(reply, 1, "subscribe", topic, offset=seen, recovering=True)
        got = [await client.receive() for _ in expected]
        self.assertEqual(got, expected)
        await self.assert_nothing_more(client)

    async def test_resuming_from_further_back_than_the_history_reaches_tells_of_a_gap(self):
        topic = self.topic("short:")  # keeps 2
        seen, missed = await self.missed_while_away(topic, 4)
        client = await self.open()
        self.assert_reply(
            await client.subscribe(topic, since=seen), 1, "subscribe", topic,
            offset=seen, recovering=True,
        )
        gap = await client.receive()
        self.assertEqual((gap.get("type"), gap.get("topic")), ("gap", topic), gap)
        self.assertIsInstance(gap.get("reason"), str, gap)
        for expected in missed[-2:]:
            self.assertEqual(await client.receive(), expected)
        await self.assert_nothing_more(client)

    async def test_resuming_from_an_offset_newer_than_the_history_tells_of_a_gap(self):
        topic = self.topic()
        seen, missed = await self.missed_while_away(topic, 1)
        client = await self.open()
        ms, _ = offset_key(missed[-1]["offset"])
        reply = await client.subscribe(topic, since=f"{ms + 3_600_000}-0")
        self.assertEqual((reply["type"], reply["recovering"]), ("reply", False), reply)
        gap = await client.receive()
        self.assertEqual((gap.get("type"), gap.get("topic")), ("gap", topic), gap)
        await self.assert_nothing_more(client)

    async def test_resuming_from_the_newest_offset_replays_nothing(self):
        topic = self.topic()
        seen, missed = await self.missed_while_away(topic, 1)
        client = await self.open()
        newest = missed[-1]["offset"]
        self.assert_reply(
            await client.subscribe(topic, since=newest), 1, "subscribe", topic,
            offset=newest, recovering=False,
        )
        await self.assert_nothing_more(client)


class Errors(V1TestCase):
    async def test_invalid_topic(self):
        client = await self.open()
        for op, fields in (("subscribe", {}), ("publish", {"data": 1}), ("history", {})):
            error = await client.command(op, topic="no spaces here", **fields)
            self.assert_error(error, "invalid_topic", client.last_id, op, "no spaces here")
        too_long = "t" * 200
        error = await client.subscribe(too_long)
        self.assert_error(error, "invalid_topic", client.last_id, "subscribe", too_long)

    async def test_not_subscribed(self):
        client = await self.open()
        topic = self.topic()
        error = await client.command("unsubscribe", topic=topic)
        self.assert_error(error, "not_subscribed", 1, "unsubscribe", topic)

    async def test_bad_request(self):
        client = await self.open()
        await client.send("{not json")
        self.assert_error(await client.receive(), "bad_request", None, None, None)
        await client.send({"id": 9, "op": "fly"})
        self.assert_error(await client.receive(), "bad_request", 9, "fly", None)
        await client.send({"id": 10, "op": "subscribe"})
        self.assert_error(await client.receive(), "bad_request", 10, "subscribe", None)
        await client.send({"id": 11, "op": "subscribe", "topic": "t", "since": "yesterday"})
        self.assert_error(await client.receive(), "bad_request", 11, "subscribe", "t")
        await client.send({"id": 12, "op": "publish", "topic": "t", "data": 1, "text": "x"})
        self.assert_error(await client.receive(), "bad_request", 12, "publish", "t")
        await client.send({"id": -1, "op": "ping"})
        self.assert_error(await client.receive(), "bad_request", None, "ping", None)
        await client.send(b"\x01binary")
        self.assert_error(await client.receive(), "bad_request", None, None, None)
        # None of it closed the connection.
        self.assert_reply(await client.command("ping"), 1, "ping")

    async def test_no_history(self):
        client = await self.open()
        topic = self.topic("live:")
        error = await client.command("history", topic=topic)
        self.assert_error(error, "no_history", 1, "history", topic)
        error = await client.subscribe(topic, since="1-0")
        self.assert_error(error, "no_history", 2, "subscribe", topic)

    async def test_topic_full(self):
        first, second = await self.open(), await self.open()
        topic = self.topic("solo:")
        reply = await first.subscribe(topic)
        self.assertEqual(reply["type"], "reply", reply)
        error = await second.subscribe(topic)
        self.assert_error(error, "topic_full", 1, "subscribe", topic)

    async def test_refresh_without_auth_is_forbidden(self):
        client = await self.open()
        error = await client.command("refresh", token="x.y.z")
        self.assert_error(error, "forbidden", 1, "refresh", None)


def main():
    result = unittest.main(module=__name__, exit=False, verbosity=2).result
    # Errors outside a test (the server's start or stop) count as failures too.
    failed = len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses)
    print(f"interop: {max(result.testsRun - failed, 0)} passed, {failed} failed")
    sys.exit(0 if result.wasSuccessful() and result.testsRun > 0 else 1)


if __name__ == "__main__":
    main()
