"""A low-level HTTP/2 client for the gateway's tests (Debian's python3-h2, with its hpack and
hyperframe): well-behaved exchanges curl cannot show (request and response trailers) and
the abuse cases RFC 9113 defences are tested with. Speaks h2c with prior knowledge.

    h2peer.py CASE PORT [ARGS...]

Prints one JSON object: what the server sent back (statuses, trailers, RST_STREAM and
GOAWAY error codes, whether the connection closed).
"""
import json
import socket
import sys
import time

import h2.config
import h2.connection
import h2.events
import h2.settings
from hpack import Decoder, Encoder
from hyperframe.frame import (ContinuationFrame, DataFrame, Frame, HeadersFrame, PingFrame,
                              RstStreamFrame, SettingsFrame, WindowUpdateFrame)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def connect(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def request_headers(path, method="GET", extra=()):
    return [(":method", method), (":path", path), (":scheme", "http"),
            (":authority", "h2.test")] + list(extra)


class Watcher:
    """Reads raw frames and records what the server did."""

    def __init__(self, sock):
        self.sock = sock
        self.buf = b""
        self.decoder = Decoder()
        self.seen = {"goaway": None, "resets": {}, "statuses": {}, "closed": False,
                     "data": {}, "trailers": {}, "ended": []}

    def read_frames(self, seconds):
        deadline = time.time() + seconds
        while time.time() < deadline and not self.seen["closed"]:
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return
            except ConnectionResetError:
                self.seen["closed"] = True
                return
            if not chunk:
                self.seen["closed"] = True
                return
            self.buf += chunk
            while len(self.buf) >= 9:
                frame, length = Frame.parse_frame_header(memoryview(self.buf[:9]))
                if len(self.buf) < 9 + length:
                    break
                frame.parse_body(memoryview(self.buf[9:9 + length]))
                self.buf = self.buf[9 + length:]
                self.on(frame)

    def on(self, f):
        name = type(f).__name__
        if name == "GoAwayFrame":
            self.seen["goaway"] = f.error_code
        elif name == "RstStreamFrame":
            self.seen["resets"][str(f.stream_id)] = f.error_code
        elif name == "DataFrame":
            k = str(f.stream_id)
            self.seen["data"][k] = self.seen["data"].get(k, 0) + len(f.data)
            if "END_STREAM" in f.flags:
                self.seen["ended"].append(f.stream_id)
        elif name == "HeadersFrame":
            # The server's header blocks, decoded in order (one HPACK table per connection).
            fields = dict(self.decoder.decode(f.data, raw=False))
            if "END_STREAM" in f.flags:
                self.seen["ended"].append(f.stream_id)
            if ":status" in fields:
                self.seen["statuses"][str(f.stream_id)] = int(fields[":status"])
            else:
                self.seen["trailers"][str(f.stream_id)] = fields
        elif name == "SettingsFrame" and "ACK" not in f.flags:
            self.send(SettingsFrame(0, flags=["ACK"]).serialize())
        elif name == "PingFrame" and "ACK" not in f.flags:
            self.send(PingFrame(0, opaque_data=f.opaque_data, flags=["ACK"]).serialize())

    def send(self, data):
        try:
            self.sock.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            self.seen["closed"] = True


def raw_start(port, settings=None):
    s = connect(port)
    s.sendall(PREFACE + SettingsFrame(0, settings=settings or {}).serialize())
    return s


def case_exchange(port, path, body_len, trailer):
    """POST `body_len` bytes (with a request trailer when `trailer` is "yes"); report the
    response's status, body length and trailers."""
    body_len = int(body_len)
    s = connect(port)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    s.sendall(conn.data_to_send())
    sid = conn.get_next_available_stream_id()
    end_headers_only = body_len == 0 and trailer != "yes"
    conn.send_headers(sid, request_headers(path, "POST"), end_stream=end_headers_only)
    s.sendall(conn.data_to_send())
    sent = 0
    out = {"status": None, "body": 0, "trailers": {}, "headers": {}}
    done = False
    body = bytes((i * 7) % 251 for i in range(min(body_len, 65536)))
    while not done:
        while sent < body_len:
            room = min(conn.local_flow_control_window(sid), conn.max_outbound_frame_size,
                       body_len - sent)
            if room <= 0:
                break
            piece = body[: room] if room <= len(body) else body * (room // len(body) + 1)
            last = sent + room == body_len and trailer != "yes"
            conn.send_data(sid, piece[:room], end_stream=last)
            sent += room
            if sent == body_len and trailer == "yes":
                conn.send_headers(sid, [("x-req-trailer", "yes")], end_stream=True)
        s.sendall(conn.data_to_send())
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                hs = {k.decode(): v.decode() for k, v in ev.headers}
                out["status"] = int(hs[":status"])
                out["headers"] = hs
            elif isinstance(ev, h2.events.DataReceived):
                out["body"] += len(ev.data)
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.TrailersReceived):
                out["trailers"] = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.StreamEnded):
                done = True
            elif isinstance(ev, h2.events.StreamReset):
                out["reset"] = int(ev.error_code)
                done = True
        s.sendall(conn.data_to_send())
    print(json.dumps(out))


def case_rapid_reset(port, n):
    """Open and cancel `n` streams back to back (CVE-2023-44487)."""
    s = raw_start(port)
    enc = Encoder()
    frames = b""
    for i in range(int(n)):
        sid = 1 + 2 * i
        hf = HeadersFrame(sid, flags=["END_HEADERS", "END_STREAM"])
        hf.data = enc.encode(request_headers("/slow"))
        frames += hf.serialize() + RstStreamFrame(sid, error_code=8).serialize()
    try:
        s.sendall(frames)
    except (BrokenPipeError, ConnectionResetError):
        pass
    w = Watcher(s)
    w.read_frames(5)
    print(json.dumps(w.seen))


def case_continuation(port, n):
    """HEADERS without END_HEADERS, then `n` CONTINUATION frames of 4 KiB header fields,
    never ending the block (CVE-2024-27316)."""
    s = raw_start(port)
    enc = Encoder()
    hf = HeadersFrame(1, flags=["END_STREAM"])
    hf.data = enc.encode(request_headers("/"))
    s.sendall(hf.serialize())
    w = Watcher(s)
    for i in range(int(n)):
        cf = ContinuationFrame(1)
        cf.data = enc.encode([(f"x-flood-{i}", "v" * 4096)])
        w.send(cf.serialize())
        w.read_frames(0.01)
        if w.seen["closed"]:
            break
    w.read_frames(3)
    print(json.dumps(w.seen))


def case_big_headers(port, size):
    """One request whose header list is `size` bytes."""
    s = raw_start(port)
    enc = Encoder()
    hf = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
    hf.data = enc.encode(request_headers("/", extra=[("x-big", "b" * int(size))]))
    # Split into frames of at most 16 KiB (HEADERS, then CONTINUATION).
    block, first = hf.data, True
    while block or first:
        piece, block = block[:16384], block[16384:]
        last = not block
        if first:
            f = HeadersFrame(1, flags=["END_STREAM"] + (["END_HEADERS"] if last else []))
            first = False
        else:
            f = ContinuationFrame(1, flags=["END_HEADERS"] if last else [])
        f.data = piece
        s.sendall(f.serialize())
    w = Watcher(s)
    w.read_frames(3)
    print(json.dumps(w.seen))


def case_bad_frame(port, kind):
    """A frame RFC 9113 makes a connection error."""
    s = raw_start(port)
    if kind == "data_on_stream_0":
        s.sendall(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
    elif kind == "settings_bad_length":
        s.sendall(b"\x00\x00\x05\x04\x00\x00\x00\x00\x00" + b"\x00" * 5)
    elif kind == "window_update_zero":
        s.sendall(b"\x00\x00\x04\x08\x00\x00\x00\x00\x00" + b"\x00\x00\x00\x00")
    elif kind == "headers_on_even_stream":
        enc = Encoder()
        hf = HeadersFrame(2, flags=["END_HEADERS", "END_STREAM"])
        hf.data = enc.encode(request_headers("/"))
        s.sendall(hf.serialize())
    elif kind == "garbage_hpack":
        hf = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
        hf.data = b"\xff\xff\xff\xff\xff\xff"
        s.sendall(hf.serialize())
    w = Watcher(s)
    w.read_frames(3)
    print(json.dumps(w.seen))


def case_flood(port, kind, n):
    """`n` PING or SETTINGS frames without reading, then one request."""
    s = raw_start(port)
    if kind == "ping":
        one = PingFrame(0, opaque_data=b"12345678").serialize()
    else:
        one = SettingsFrame(0, settings={h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 100}).serialize()
    try:
        s.sendall(one * int(n))
        enc = Encoder()
        hf = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
        hf.data = enc.encode(request_headers("/"))
        s.sendall(hf.serialize())
    except (BrokenPipeError, ConnectionResetError):
        pass
    w = Watcher(s)
    w.read_frames(5)
    print(json.dumps(w.seen))


def case_stall(port, path, seconds):
    """A request whose client never opens its window (initial window 0): the server may
    not send the body; report what it does within `seconds`."""
    s = raw_start(port, {h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: 0})
    enc = Encoder()
    hf = HeadersFrame(1, flags=["END_HEADERS", "END_STREAM"])
    hf.data = enc.encode(request_headers(path))
    s.sendall(hf.serialize())
    w = Watcher(s)
    w.read_frames(float(seconds))
    print(json.dumps(w.seen))


def case_no_body(port, path, seconds):
    """A POST announcing 100 bytes that never sends them."""
    s = raw_start(port)
    enc = Encoder()
    hf = HeadersFrame(1, flags=["END_HEADERS"])
    hf.data = enc.encode(request_headers(path, "POST", [("content-length", "100")]))
    s.sendall(hf.serialize())
    w = Watcher(s)
    w.read_frames(float(seconds))
    print(json.dumps(w.seen))


def case_idle(port, seconds):
    """A connection that opens no stream: what the server does within `seconds`."""
    s = raw_start(port)
    w = Watcher(s)
    w.read_frames(float(seconds))
    print(json.dumps(w.seen))


def case_serve_silent(_port):
    """An h2c server that takes calls and never answers them; prints its port."""
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(16)
    print(srv.getsockname()[1], flush=True)

    def handle(sock):
        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
        conn.initiate_connection()
        sock.sendall(conn.data_to_send())
        while True:
            data = sock.recv(65536)
            if not data:
                return
            conn.receive_data(data)
            sock.sendall(conn.data_to_send())

    while True:
        c, _ = srv.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


def case_grpc_call(port, path, grpc_timeout):
    """One gRPC call with `grpc-timeout` and no deadline of the client's own; reports the
    status, trailers and how long the answer took."""
    s = connect(port)
    s.settimeout(15)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    extra = [("content-type", "application/grpc"), ("te", "trailers"),
             ("grpc-timeout", grpc_timeout)]
    conn.send_headers(1, request_headers(path, "POST", extra))
    conn.send_data(1, b"\x00\x00\x00\x00\x02hi", end_stream=True)
    s.sendall(conn.data_to_send())
    start = time.time()
    out = {"headers": {}, "trailers": {}}
    done = False
    while not done:
        data = s.recv(65536)
        if not data:
            break
        for ev in conn.receive_data(data):
            if isinstance(ev, h2.events.ResponseReceived):
                out["headers"] = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, h2.events.TrailersReceived):
                out["trailers"] = {k.decode(): v.decode() for k, v in ev.headers}
            elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                done = True
        s.sendall(conn.data_to_send())
    out["seconds"] = time.time() - start
    print(json.dumps(out))


CASES = {
    "serve_silent": case_serve_silent,
    "grpc_call": case_grpc_call,
    "idle": case_idle,
    "exchange": case_exchange,
    "rapid_reset": case_rapid_reset,
    "continuation": case_continuation,
    "big_headers": case_big_headers,
    "bad_frame": case_bad_frame,
    "flood": case_flood,
    "stall": case_stall,
    "no_body": case_no_body,
}

if __name__ == "__main__":
    CASES[sys.argv[1]](int(sys.argv[2]), *sys.argv[3:])
