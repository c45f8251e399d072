"""An independent WebSocket peer (the Python `websockets` library) for Stratus's
interoperability tests, with permessage-deflate on.

  ws_peer.py client URL COUNT   connect, send COUNT text and binary messages, check each
                                echo, print the negotiated extensions, close.
  ws_peer.py server             echo server on an ephemeral loopback port; prints
                                "PORT n", then serves until stdin closes (at most 60 s).
"""

import asyncio
import json
import sys

from websockets.asyncio.client import connect
from websockets.asyncio.server import serve


def payloads(count):
    for i in range(count):
        doc = {"seq": i, "topic": "prices", "items": [{"sym": "S%d" % j, "px": j * 1.5} for j in range(40)]}
        yield json.dumps(doc)
        yield bytes((i * 7 + j) % 251 for j in range(3000))


async def run_client(url, count):
    async with connect(url, compression="deflate", max_size=1 << 24) as ws:
        for sent in payloads(count):
            await ws.send(sent)
            got = await ws.recv()
            if got != sent:
                raise SystemExit("echo differs for message of %d bytes" % len(sent))
        print("EXTENSIONS", ws.response.headers.get("Sec-WebSocket-Extensions", ""))
        print("OK", 2 * count)


async def echo(ws):
    extensions = ws.request.headers.get("Sec-WebSocket-Extensions", "")
    async for message in ws:
        if message == "extensions?":
            await ws.send(ws.response.headers.get("Sec-WebSocket-Extensions", "") + " | offered: " + extensions)
        else:
            await ws.send(message)


async def run_server():
    async with serve(echo, "127.0.0.1", 0, compression="deflate", max_size=1 << 24) as server:
        port = server.sockets[0].getsockname()[1]
        print("PORT", port, flush=True)
        loop = asyncio.get_running_loop()
        stdin_closed = loop.run_in_executor(None, sys.stdin.read)
        await asyncio.wait_for(stdin_closed, timeout=60)


if __name__ == "__main__":
    if sys.argv[1] == "client":
        asyncio.run(run_client(sys.argv[2], int(sys.argv[3])))
    else:
        asyncio.run(run_server())
