#!/usr/bin/env python3
"""Holds many client connections to a proxy in one state, for benches/conn-memory.sh.

    conn_hold.py client --addr 127.0.0.1:8080 --conns N --mode MODE --ready FILE
    conn_hold.py backend --addr 127.0.0.1:8081 [--hold]

client: opens N connections and brings each into MODE, then writes "ready N" to FILE (or
"failed ..." with what went wrong) and holds them until it is killed:
  fresh   connected, nothing sent (accepted and silent);
  idle    one request answered on it, kept alive (between requests);
  half    half a request head sent (the line and some headers, no blank line);
  active  a whole request sent, its response not yet come (the backend holds it: run the
          backend with --hold);
  ws      a WebSocket upgrade answered (101), then nothing either way (a quiet WebSocket).
  h2      over TLS only: HTTP/2 chosen by ALPN, one GET answered on stream 1 (the
          server's SETTINGS acknowledged), then nothing (an idle HTTP/2 connection).
With --tls every connection first completes a TLS handshake (no certificate verification,
SNI "localhost"), so `fresh` is then an established TLS connection that has sent nothing.
backend: a keep-alive HTTP/1.1 server answering every request with 200 and a 2-byte body
(101 to an `Upgrade: websocket` request, then silence on that connection), or, with
--hold, reading requests and never answering (it keeps the connections open).

Plain sockets and selectors, no third-party modules: Debian's python3 runs it.
"""
import argparse
import resource
import selectors
import socket
import ssl
import sys
import time

HEAD = (b"GET /conn-memory HTTP/1.1\r\nHost: bench\r\nUser-Agent: conn-hold\r\n"
        b"Accept: */*\r\nX-Padding: " + b"p" * 200 + b"\r\n")
UPGRADE = (b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
           b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n")


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def client(args):
    raise_nofile()
    host, port = args.addr.rsplit(":", 1)
    port = int(port)
    socks = []
    status = "ready"
    tls = None
    if args.tls:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        tls.check_hostname = False
        tls.verify_mode = ssl.CERT_NONE
        if args.mode == "h2":
            tls.set_alpn_protocols(["h2"])
    try:
        # Connect in batches of 100 (then bring them to the mode) so the accept queues never
        # overflow and the proxy sees a steady ramp, not one burst of N busy connections.
        for start in range(0, args.conns, 100):
            batch = []
            for _ in range(min(100, args.conns - start)):
                s = socket.create_connection((host, port), timeout=30)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if tls:
                    s = tls.wrap_socket(s, server_hostname="localhost")
                batch.append(s)
            bring(batch, args.mode)
            socks.extend(batch)
    except Exception as e:  # noqa: BLE001 - reported to the driver, which stops the run
        status = f"failed after {len(socks)} connections: {e}"
    with open(args.ready, "w") as f:
        f.write(f"{status} {len(socks)}\n")
    while True:
        time.sleep(3600)


def bring(batch, mode):
    if mode == "fresh":
        return
    if mode == "half":
        for s in batch:
            s.sendall(HEAD[:len(HEAD) // 2])
        return
    if mode == "h2":
        for s in batch:
            h2_get(s)
        return
    if mode == "ws":
        for s in batch:
            s.sendall(HEAD + UPGRADE + b"\r\n")
        for s in batch:
            expect(s, b"HTTP/1.1 101", 0)
        return
    for s in batch:
        s.sendall(HEAD + b"\r\n")
    if mode == "active":
        return
    # idle: read each whole response (Content-Length: 2 from the backend).
    for s in batch:
        expect(s, b"HTTP/1.1 200", 2)


def h2_frame(kind, flags, stream, payload=b""):
    return (len(payload).to_bytes(3, "big") + bytes([kind, flags])
            + stream.to_bytes(4, "big") + payload)


# GET / on stream 1, HPACK-coded from the static table (:method GET, :scheme https, :path /)
# and a literal :authority.
H2_GET = bytes([0x82, 0x87, 0x84, 0x41, 9]) + b"localhost"


def h2_get(s):
    """Sends the HTTP/2 preface, an empty SETTINGS and one GET (HEADERS with END_STREAM);
    reads frames, acknowledging the server's SETTINGS, until stream 1's response ends."""
    s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + h2_frame(4, 0, 0) + h2_frame(1, 5, 1, H2_GET))
    data = b""
    while True:
        chunk = s.recv(65536)
        if not chunk:
            raise RuntimeError("the proxy closed a connection")
        data += chunk
        while len(data) >= 9 and len(data) >= 9 + int.from_bytes(data[:3], "big"):
            n, kind, flags = int.from_bytes(data[:3], "big"), data[3], data[4]
            stream = int.from_bytes(data[5:9], "big") & 0x7FFFFFFF
            data = data[9 + n:]
            if kind == 4 and not flags & 1:
                s.sendall(h2_frame(4, 1, 0))
            if stream == 1 and kind in (0, 1) and flags & 1:
                return


def expect(s, status_line, body_len):
    """Reads a response head and body_len bytes of body; fails unless it starts so."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.split(b"\r\n\r\n", 1)[1]) < body_len:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("the proxy closed a connection")
        data += chunk
    if not data.startswith(status_line):
        raise RuntimeError("unexpected response: " + data[:40].decode("latin-1"))


def backend(args):
    raise_nofile()
    host, port = args.addr.rsplit(":", 1)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    lsock.bind((host, int(port)))
    lsock.listen(4096)
    lsock.setblocking(False)
    sel = selectors.DefaultSelector()
    sel.register(lsock, selectors.EVENT_READ, None)
    bufs = {}
    reply = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok"
    switch = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")
    upgraded = set()
    while True:
        for key, _ in sel.select():
            if key.data is None:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                sel.register(conn, selectors.EVENT_READ, "c")
                bufs[conn] = b""
                continue
            conn = key.fileobj
            try:
                chunk = conn.recv(65536)
            except (BlockingIOError, ConnectionError):
                chunk = b"" if not isinstance(sys.exc_info()[1], BlockingIOError) else None
            if chunk is None:
                continue
            if not chunk:
                sel.unregister(conn)
                bufs.pop(conn, None)
                upgraded.discard(conn)
                conn.close()
                continue
            if args.hold or conn in upgraded:
                continue
            bufs[conn] += chunk
            while b"\r\n\r\n" in bufs[conn]:
                head, bufs[conn] = bufs[conn].split(b"\r\n\r\n", 1)
                if b"upgrade: websocket" in head.lower():
                    conn.sendall(switch)
                    upgraded.add(conn)
                    break
                conn.sendall(reply)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("client")
    c.add_argument("--addr", required=True)
    c.add_argument("--conns", type=int, required=True)
    c.add_argument("--mode", choices=["fresh", "idle", "half", "active", "ws", "h2"], required=True)
    c.add_argument("--ready", required=True)
    c.add_argument("--tls", action="store_true")
    b = sub.add_parser("backend")
    b.add_argument("--addr", required=True)
    b.add_argument("--hold", action="store_true")
    args = p.parse_args()
    client(args) if args.cmd == "client" else backend(args)


if __name__ == "__main__":
    main()
