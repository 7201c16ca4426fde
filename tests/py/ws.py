"""WebSocket server and client for the gateway's tests (Python `websockets`, Debian's
python3-websockets).

    ws.py serve NAME [CERT KEY]   echo server on a free port; prints the port, then serves.
                                   A plain GET (no Upgrade) is answered 200 with NAME.
    ws.py check URL [CAFILE]      runs the exchange below through URL and prints one JSON
                                   object with what it saw.
    ws.py hold URL SECONDS        opens a connection, prints "open" and the server's NAME,
                                   keeps it SECONDS
                                   (pinging every 0.2 s), prints how it ended.
"""
import asyncio
import http
import json
import os
import ssl
import sys

import logging

import websockets


NAME = ""


async def echo(ws, *_):
    async for msg in ws:
        if msg == "name":
            await ws.send(NAME)
            continue
        if msg == "close-4001":
            await ws.close(4001, "bye")
            return
        if msg == "headers":
            await ws.send(json.dumps({k.lower(): v for k, v in ws.request_headers.items()}))
            continue
        await ws.send(msg)


async def serve(name, cert=None, key=None):
    global NAME
    NAME = name
    async def plain(path, headers):
        if "upgrade" not in headers.get("Connection", "").lower():
            return (http.HTTPStatus.OK, [("Content-Type", "text/plain")], name.encode())
        return None

    tls = None
    if cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
    async with websockets.serve(echo, "127.0.0.1", 0, ssl=tls, max_size=None,
                                process_request=plain) as server:
        port = server.sockets[0].getsockname()[1]
        print(port, flush=True)
        await asyncio.Future()


def client_tls(url, cafile):
    if not url.startswith("wss:"):
        return None
    ctx = ssl.create_default_context(cafile=cafile)
    return ctx


async def check(url, cafile=None):
    seen = {}
    async with websockets.connect(url, ssl=client_tls(url, cafile), max_size=None,
                                  open_timeout=5) as ws:
        await ws.send("hello")
        seen["text"] = await ws.recv()
        blob = os.urandom(100 * 1024)
        await ws.send(blob)
        seen["binary_ok"] = (await ws.recv()) == blob
        big = os.urandom(3 * 1024 * 1024)
        await ws.send(big)
        seen["large_ok"] = (await ws.recv()) == big
        pong = await ws.ping(b"p1")
        await asyncio.wait_for(pong, 5)
        seen["pong"] = True
        await ws.send("headers")
        seen["headers"] = json.loads(await ws.recv())
        await ws.send("close-4001")
        await ws.wait_closed()
        seen["close_code"] = ws.close_code
        seen["close_reason"] = ws.close_reason
    print(json.dumps(seen), flush=True)


async def hold(url, seconds):
    ticks = 0
    try:
        async with websockets.connect(url, open_timeout=5, ping_interval=None) as ws:
            await ws.send("name")
            print("open", await ws.recv(), flush=True)
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                await ws.send("tick")
                await asyncio.wait_for(ws.recv(), 5)
                ticks += 1
                await asyncio.sleep(0.2)
            print("held", ticks, flush=True)
    except websockets.ConnectionClosed as e:
        print(f"closed {e.code} after {ticks} echoes", flush=True)
    except Exception as e:  # the tests read how it ended
        print(f"error {type(e).__name__}: {e} after {ticks} echoes", flush=True)


def main():
    logging.basicConfig(level=logging.CRITICAL)
    cmd = sys.argv[1]
    if cmd == "serve":
        asyncio.run(serve(*sys.argv[2:]))
    elif cmd == "check":
        asyncio.run(check(*sys.argv[2:]))
    elif cmd == "hold":
        asyncio.run(hold(sys.argv[2], float(sys.argv[3])))


if __name__ == "__main__":
    main()
