#!/usr/bin/env python3
"""A small WebSocket subscriber and publisher on Python's standard library alone, for the
packaging and Prometheus checks (scripts/package-test.sh, scripts/prometheus-test.sh),
which run where no other client is built or installed.

    ws_probe.py --ws HOST:PORT --topic T --subscribers N
                [--publish M --admin HOST:PORT] [--expect M --ready FILE]
                [--deflate] [--size BYTES] [--refusals] [--timeout S]

Connects N subscribers to ws://HOST:PORT/ws (offering permessage-deflate with --deflate),
each subscribing to T with a subscribe command and waiting for its reply, then either publishes M messages itself through the admin API (--publish) or
writes FILE once every subscriber is connected and waits for M messages published by
someone else (--expect). Every subscriber must get every message, in order; each then
closes with 1000 and waits for the server's Close. --refusals first makes a few upgrades
the server must refuse (404, 400, 426) and checks their statuses. Prints one JSON line
with what it saw; exits 1 on any failure.
"""

import argparse
import base64
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import time
import urllib.request
import zlib

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def parse_addr(text):
    host, port = text.rsplit(":", 1)
    return host, int(port)


def read_head(sock):
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"connection closed during the handshake: {data!r}")
        data += chunk
    head, rest = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, rest


def upgrade(addr, path, headers, timeout):
    """Sends an upgrade request; returns (socket, status, headers, leftover bytes)."""
    sock = socket.create_connection(addr, timeout=timeout)
    request = f"GET {path} HTTP/1.1\r\nHost: {addr[0]}:{addr[1]}\r\n"
    request += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    sock.sendall(request.encode())
    status, got, rest = read_head(sock)
    return sock, status, got, rest


class Subscriber:
    def __init__(self, addr, topic, deflate, timeout):
        key = base64.b64encode(os.urandom(16)).decode()
        headers = {
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": key,
            "Sec-WebSocket-Version": "13",
        }
        if deflate:
            headers["Sec-WebSocket-Extensions"] = "permessage-deflate; client_max_window_bits"
        self.sock, status, got, self.buf = upgrade(addr, "/ws", headers, timeout)
        if status != 101:
            raise ConnectionError(f"upgrade answered {status}")
        accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
        if got.get("sec-websocket-accept") != accept:
            raise ConnectionError("bad Sec-WebSocket-Accept")
        ext = got.get("sec-websocket-extensions", "")
        self.deflate = ext.startswith("permessage-deflate")
        if deflate and not self.deflate:
            raise ConnectionError(f"permessage-deflate was not accepted: {got}")
        self.fresh_context = "server_no_context_takeover" in ext
        self.inflater = zlib.decompressobj(-15)
        self.messages = []
        self.compressed = 0
        self.close_code = None
        # In band, so the subscription is in force (with a broker: confirmed by Redis) once
        # the reply is in.
        command = json.dumps({"op": "subscribe", "topic": topic}).encode()
        self.send(0x1, command)
        reply = self.receive()
        if not (isinstance(reply, str) and json.loads(reply).get("ok") is True):
            raise ConnectionError(f"subscribe answered {reply!r}")

    def _read(self, n):
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("connection closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _frame(self):
        b0, b1 = self._read(2)
        if b1 & 0x80:
            raise ConnectionError("masked frame from the server")
        length = b1 & 0x7F
        if length == 126:
            (length,) = struct.unpack("!H", self._read(2))
        elif length == 127:
            (length,) = struct.unpack("!Q", self._read(8))
        return b0 & 0x80, b0 & 0x40, b0 & 0x0F, self._read(length)

    def send(self, opcode, payload):
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
        elif n < 65536:
            head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
        else:
            head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
        self.sock.sendall(head + mask + masked)

    def receive(self):
        """The next data message (text as str, binary as bytes); None after a Close."""
        parts, compressed, text = [], False, False
        while True:
            fin, rsv1, opcode, payload = self._frame()
            if opcode == 0x9:
                self.send(0xA, payload)
                continue
            if opcode == 0xA:
                continue
            if opcode == 0x8:
                self.close_code = struct.unpack("!H", payload[:2])[0] if payload else 1005
                return None
            if opcode in (0x1, 0x2):
                compressed, text = bool(rsv1), opcode == 0x1
            parts.append(payload)
            if fin:
                break
        data = b"".join(parts)
        if compressed:
            self.compressed += 1
            if self.fresh_context:
                self.inflater = zlib.decompressobj(-15)
            data = self.inflater.decompress(data + b"\x00\x00\xff\xff")
        return data.decode() if text else data

    def close(self):
        self.send(0x8, struct.pack("!H", 1000))
        while self.receive() is not None:
            pass
        self.sock.close()


def publish(admin, topic, body):
    request = urllib.request.Request(
        f"http://{admin[0]}:{admin[1]}/publish/{topic}",
        data=body.encode(),
        headers={"Content-Type": "text/plain"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        return json.loads(response.read())


def refusals(addr, timeout):
    """Upgrades the server must refuse, and the statuses it must give."""
    key = base64.b64encode(os.urandom(16)).decode()
    good = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": key,
        "Sec-WebSocket-Version": "13",
    }
    cases = [
        ("/elsewhere", good, 404),
        ("/ws", {**good, "Sec-WebSocket-Key": "short"}, 400),
        ("/ws", {**good, "Sec-WebSocket-Version": "8"}, 426),
    ]
    seen = {}
    for path, headers, want in cases:
        sock, status, _, _ = upgrade(addr, path, headers, timeout)
        sock.close()
        if status != want:
            raise AssertionError(f"{path} {headers}: got {status}, want {want}")
        seen[str(status)] = seen.get(str(status), 0) + 1
    return seen


def message(i, size):
    body = json.dumps({"seq": i, "pad": ""})
    pad = ("stratus " * (size // 8 + 1))[: max(0, size - len(body))]
    return json.dumps({"seq": i, "pad": pad})


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ws", required=True, type=parse_addr)
    parser.add_argument("--admin", type=parse_addr)
    parser.add_argument("--topic", default="probe")
    parser.add_argument("--subscribers", type=int, default=1)
    parser.add_argument("--publish", type=int, default=0)
    parser.add_argument("--expect", type=int, default=0)
    parser.add_argument("--ready")
    parser.add_argument("--deflate", action="store_true")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--refusals", action="store_true")
    parser.add_argument("--timeout", type=float, default=10)
    args = parser.parse_args()

    report = {}
    if args.refusals:
        report["refused"] = refusals(args.ws, args.timeout)
    subs = [
        Subscriber(args.ws, args.topic, args.deflate, args.timeout)
        for _ in range(args.subscribers)
    ]
    want = args.publish or args.expect
    errors = []

    def drain(sub):
        try:
            while len(sub.messages) < want:
                got = sub.receive()
                if got is None:
                    raise ConnectionError(f"closed by the server ({sub.close_code})")
                sub.messages.append(got)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(repr(err))

    threads = [threading.Thread(target=drain, args=(s,)) for s in subs]
    for t in threads:
        t.start()
    started = time.monotonic()
    sent = None
    if args.publish:
        sent = [message(i, args.size) for i in range(args.publish)]
        answers = [publish(args.admin, args.topic, body) for body in sent]
        report["answers"] = answers[-1]
    elif args.ready:
        with open(args.ready, "w") as ready:
            ready.write("ready\n")
    for t in threads:
        t.join(args.timeout)
    if any(t.is_alive() for t in threads):
        errors.append(f"timed out after {args.timeout}s waiting for {want} messages")
    for i, sub in enumerate(subs):
        if sent is not None and sub.messages != sent[: len(sub.messages)]:
            errors.append(f"subscriber {i} got messages out of order or altered")
        if len(sub.messages) != want:
            errors.append(f"subscriber {i} got {len(sub.messages)} of {want} messages")
    if not errors:
        for sub in subs:
            sub.close()
            if sub.close_code != 1000:
                errors.append(f"close answered with {sub.close_code}, want 1000")
    report.update(
        subscribers=len(subs),
        messages=[len(s.messages) for s in subs][:3],
        first=(subs[0].messages[0][:60] if subs and subs[0].messages else None),
        compressed=sum(s.compressed for s in subs),
        seconds=round(time.monotonic() - started, 3),
        errors=errors[:5],
    )
    print(json.dumps(report))
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
