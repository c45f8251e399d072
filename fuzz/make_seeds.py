#!/usr/bin/env python3
"""Writes the curated seed corpus, fuzz/corpus/TARGET/seed-NAME, in each target's input
layout (config bytes, then the Reads layout of src/reads.rs: a count byte, read sizes
minus one, the body). Run from anywhere; it rewrites the seeds it names and nothing else.
"""
import os, struct, zlib

os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus"))

def mask(payload, key):
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))
def frame(op, payload, fin=True, rsv=0, key=b"\x37\xfa\x21\x3d"):
    b0 = (0x80 if fin else 0) | (rsv << 4) | op
    n = len(payload)
    m = 0x80 if key else 0
    if n < 126: head = bytes([b0, m | n])
    elif n < 65536: head = bytes([b0, m | 126]) + struct.pack(">H", n)
    else: head = bytes([b0, m | 127]) + struct.pack(">Q", n)
    return head + (key + mask(payload, key) if key else payload)
def reads(body, sizes=()):
    assert len(sizes) < 16 and all(1 <= n <= 256 for n in sizes)
    return bytes([len(sizes)]) + bytes(s - 1 for s in sizes) + body
def put(target, name, data):
    os.makedirs(target, exist_ok=True)
    open(f"{target}/seed-{name}", "wb").write(data)

fd = "frame_decoder"
lim = 0x36  # frame limit 1 KiB, message limit 8 KiB
put(fd, "masked-text", bytes([0, lim]) + reads(frame(1, b"Hello")))
put(fd, "fragmented-text-in-small-reads", bytes([0x10, lim]) + reads(
    frame(1, "Hé".encode(), fin=False) + frame(0, "llo ☃".encode(), fin=False) + frame(0, b"!"),
    (1, 3, 2)))
put(fd, "ping-binary-close", bytes([0, lim]) + reads(
    frame(9, b"hi") + frame(2, bytes(range(200))) + frame(8, struct.pack(">H", 1000) + b"bye")))
put(fd, "unmasked-frame", bytes([0, lim]) + reads(frame(1, b"Hello", key=None)))
put(fd, "bad-utf8-split", bytes([0, lim]) + reads(frame(1, b"ok\xce\xbaxx\xc0\xaf"), (4,)))
put(fd, "deflate-shared", bytes([1, lim]) + reads(
    frame(1, bytes.fromhex("f248cdc9c90700"), rsv=4)))
put(fd, "deflate-context-takeover", bytes([2, lim]) + reads(
    frame(1, bytes.fromhex("f248cdc9c90700"), rsv=4) + frame(1, bytes.fromhex("f200110000"), rsv=4), (5,)))
put(fd, "client-unmasked-text", bytes([4, lim]) + reads(frame(1, b"Hello", key=None) + frame(9, b"", key=None)))

hs = "handshake"
req = (b"GET /chat?topic=news HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
       b"Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
       b"Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
       b"Sec-WebSocket-Version: 13\r\n\r\n")
put(hs, "request", bytes([0xfe]) + reads(req))
deflate_req = req.replace(b"\r\n\r\n", b"\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, permessage-deflate\r\n\r\n")
put(hs, "request-deflate-then-frame-bytewise", bytes([0xfe]) + reads(deflate_req + frame(1, b"Hi"), (1,)))
put(hs, "request-over-small-limit", bytes([0x00]) + reads(req))
put(hs, "response", bytes([0x07]) + reads(
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
    b"Sec-WebSocket-Protocol: chat\r\n\r\n", (40,)))

ex = "extension_offer"
def values(*vs):
    return reads(b"".join(vs), tuple(len(v) for v in vs))
put(ex, "browser-offer", bytes([0]) + values(b"permessage-deflate; client_max_window_bits"))
put(ex, "bare-offer-dedicated", bytes([1]) + values(b"permessage-deflate"))
put(ex, "offers-in-order", bytes([1]) + values(
    b"permessage-deflate; server_max_window_bits=8",
    b"permessage-deflate; server_max_window_bits=10; client_no_context_takeover, x-webkit-deflate-frame",
    b"permessage-deflate; client_max_window_bits=\"12\"; server_no_context_takeover"))
put(ex, "server-answer", bytes([0]) + values(
    b"permessage-deflate; server_no_context_takeover; client_no_context_takeover; client_max_window_bits=9"))
put(ex, "bad-params", bytes([0]) + values(
    b"permessage-deflate; server_max_window_bits=16, permessage-deflate; x=1; a=\"q\\\"t\""))

inf = "inflate"
def cfg(engine, bits, shift, limit):
    return bytes([engine | ((bits - 9) << 2) | (shift << 5)]) + struct.pack("<H", limit)
def raw(data, wbits=-15, level=6):
    c = zlib.compressobj(level, zlib.DEFLATED, wbits)
    out = c.compress(data) + c.flush(zlib.Z_SYNC_FLUSH)
    assert out.endswith(b"\x00\x00\xff\xff")
    return out[:-4]
put(inf, "hello", cfg(0, 15, 0, 1024) + reads(bytes.fromhex("f248cdc9c90700")))
put(inf, "context-takeover", cfg(2, 15, 0, 1024) + reads(bytes.fromhex("f248cdc9c90700f200110000"), (7, 5)))
put(inf, "stored-block", cfg(1, 15, 0, 1024) + reads(bytes.fromhex("000500faff48656c6c6f00")))
bomb = raw(b"\0" * (1 << 20), level=9)
put(inf, "bomb-1mib-zeros", cfg(1, 15, 0, 0xffff) + reads(bomb))
text = b"The quick brown fox jumps over the lazy dog. " * 5
put(inf, "text-window-9", cfg(2, 9, 0, 4096) + reads(raw(text, wbits=-9) + text, (len(raw(text, wbits=-9)), len(text))))
