"""gRPC server and client for the gateway's tests (Debian's python3-grpcio), with raw bytes
as messages (no protobuf compiler needed).

    grpcpeer.py serve NAME [CERT KEY]   service test.Echo on a free port; prints the port.
    grpcpeer.py call TARGET [CAFILE]    runs every kind of call through TARGET (host:port;
                                        TLS with CAFILE) and prints one JSON report.
    grpcpeer.py one TARGET METHOD       one unary call; prints {"code", "details", "reply"}.
"""
import json
import sys
import threading
import time
from concurrent import futures

import grpc

NAME = ""


def unary(req, ctx):
    return b"echo:" + req


def client_stream(reqs, ctx):
    return b"+".join(reqs)


def server_stream(req, ctx):
    for i in range(int(req or b"3")):
        yield b"part-%d" % i


def bidi(reqs, ctx):
    for r in reqs:
        yield b"re:" + r


def fail(req, ctx):
    ctx.abort(grpc.StatusCode.NOT_FOUND, "nothing here: " + req.decode())


def slow(req, ctx):
    time.sleep(float(req or b"3"))
    return b"late"


def name(req, ctx):
    ctx.set_trailing_metadata((("x-served-by", NAME),))
    return NAME.encode()


def big(req, ctx):
    return bytes(int(req))


def serve(name_, cert=None, key=None):
    global NAME
    NAME = name_
    h = grpc.method_handlers_generic_handler("test.Echo", {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "Name": grpc.unary_unary_rpc_method_handler(name),
        "Big": grpc.unary_unary_rpc_method_handler(big),
    })
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), handlers=[h],
                         options=[("grpc.max_receive_message_length", 64 << 20),
                                  ("grpc.max_send_message_length", 64 << 20)])
    if cert:
        creds = grpc.ssl_server_credentials([(open(key, "rb").read(), open(cert, "rb").read())])
        port = server.add_secure_port("127.0.0.1:0", creds)
    else:
        port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    threading.Event().wait()


def channel(target, cafile=None):
    opts = [("grpc.max_receive_message_length", 64 << 20),
            ("grpc.max_send_message_length", 64 << 20)]
    if cafile:
        creds = grpc.ssl_channel_credentials(open(cafile, "rb").read())
        opts.append(("grpc.ssl_target_name_override", "localhost"))
        return grpc.secure_channel(target, creds, options=opts)
    return grpc.insecure_channel(target, options=opts)


def outcome(fn):
    try:
        r = fn()
        return {"code": "OK", "reply": r.decode(errors="replace") if isinstance(r, bytes) else r}
    except grpc.RpcError as e:
        return {"code": e.code().name, "details": e.details()}


def call(target, cafile=None):
    ch = channel(target, cafile)
    m = lambda kind, path: getattr(ch, kind)("/test.Echo/" + path)
    rep = {}
    rep["unary"] = outcome(lambda: m("unary_unary", "Unary")(b"hi", timeout=10))
    rep["client_stream"] = outcome(
        lambda: m("stream_unary", "ClientStream")(iter([b"a", b"b", b"c"]), timeout=10))
    rep["server_stream"] = outcome(
        lambda: [x.decode() for x in m("unary_stream", "ServerStream")(b"4", timeout=10)])

    def chatty():
        for i in range(5):
            yield b"m%d" % i
            time.sleep(0.02)
    rep["bidi"] = outcome(lambda: [x.decode() for x in m("stream_stream", "Bidi")(chatty(), timeout=10)])
    rep["fail"] = outcome(lambda: m("unary_unary", "Fail")(b"x", timeout=10))
    rep["deadline"] = outcome(lambda: m("unary_unary", "Slow")(b"3", timeout=0.5))
    r, call_ = m("unary_unary", "Name").with_call(b"", timeout=10)
    rep["trailer"] = dict(call_.trailing_metadata()).get("x-served-by")
    rep["big"] = outcome(lambda: len(m("unary_unary", "Big")(b"5000000", timeout=20)))
    rep["big_up"] = outcome(lambda: m("unary_unary", "Unary")(bytes(3000000), timeout=20)[:5])
    print(json.dumps(rep), flush=True)


def one(target, method, payload="x"):
    ch = channel(target)
    print(json.dumps(outcome(
        lambda: ch.unary_unary("/test.Echo/" + method)(payload.encode(), timeout=10))), flush=True)


if __name__ == "__main__":
    cmd = sys.argv[1]
    {"serve": serve, "call": call, "one": one}[cmd](*sys.argv[2:])
