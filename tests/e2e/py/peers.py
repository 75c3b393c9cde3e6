"""Independent HTTP peers for the e2e tests: gRPC (grpcio), WebSocket (websockets), an
HTTP/2 CONNECT tunnel (the h2 library), and raw HTTP/2 frames for abuse (rapid reset,
CONTINUATION flood).

usage: peers.py grpc-server PORT | grpc-client HOST:PORT | grpc-call HOST:PORT /SERVICE/METHOD [NAME=VALUE]
              | grpc-calls HOST:PORT /SERVICE/METHOD N [NAME=VALUE ...]
              | ws-server PORT | ws-client URL | http1-server PORT
              | h2-settings HOST:PORT | h2-rapid-reset HOST:PORT | h2-continuation-flood HOST:PORT
              | h2-tunnel HOST:PORT AUTHORITY | h2-padded-header HOST:PORT
Servers print "ready" once listening; clients print "ok" and exit 0 on success (grpc-call
prints the call's status code name, e.g. OK or PERMISSION_DENIED, and the details; grpc-calls
makes N calls and prints one JSON line: how many ended how, and the last reply and the last
error's metadata); h2-tunnel opens a CONNECT stream to AUTHORITY, sends bytes through it
and prints the status and what came back; the raw HTTP/2 abuse clients print what they
observed; h2-padded-header sends a GET whose header value starts with a space (malformed,
RFC 9113 section 8.2.1) and prints "status=S" or "reset=CODE". The server's
Metadata method answers with the metadata its call arrived with, as JSON. http1-server is
Python's own http.server, which speaks HTTP/1 only and answers GET with "http/1 only".
"""
import asyncio
import json
import socket
import struct
import sys

import grpc


def grpc_server(port):
    from concurrent import futures

    def echo(request, context):
        context.set_trailing_metadata((("x-weft-test", "trailer"),))
        return request

    def chat(requests, context):
        for r in requests:
            yield b"echo:" + r

    def fail(request, context):
        context.abort(grpc.StatusCode.UNAVAILABLE, "failing on purpose")

    def metadata(request, context):
        return json.dumps(sorted(context.invocation_metadata())).encode()

    handler = grpc.method_handlers_generic_handler(
        "weft.Test",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
            "Metadata": grpc.unary_unary_rpc_method_handler(metadata),
        },
    )
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def grpc_client(addr):
    with grpc.insecure_channel(addr) as channel:
        echo = channel.unary_unary("/weft.Test/Echo")
        reply, call = echo.with_call(b"ping" * 1000, timeout=10)
        assert reply == b"ping" * 1000, reply[:20]
        trailers = dict(call.trailing_metadata())
        assert trailers.get("x-weft-test") == "trailer", trailers
        chat = channel.stream_stream("/weft.Test/Chat")
        replies = list(chat(iter([b"m%d" % i for i in range(50)]), timeout=10))
        assert replies == [b"echo:m%d" % i for i in range(50)], replies[:3]
        fail = channel.unary_unary("/weft.Test/Fail")
        try:
            fail(b"x", timeout=10)
            raise AssertionError("Fail succeeded")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e.code()
    print("ok", flush=True)


def grpc_call(addr, path, header=None):
    metadata = [tuple(header.split("=", 1))] if header else None
    with grpc.insecure_channel(addr) as channel:
        call = channel.unary_unary(path)
        try:
            call(b"ping", timeout=10, metadata=metadata)
            print("OK", flush=True)
        except grpc.RpcError as e:
            print(e.code().name, e.details(), flush=True)


def grpc_calls(addr, path, n, *headers):
    """N unary calls: {"outcomes": {"OK" or "CODE details": count}, "reply": the last reply
    (text), "initial": and "trailing": the last error's metadata}."""
    metadata = [tuple(h.split("=", 1)) for h in headers] or None
    outcomes, reply, initial, trailing = {}, None, None, None
    with grpc.insecure_channel(addr) as channel:
        call = channel.unary_unary(path)
        for _ in range(int(n)):
            try:
                reply = call(b"ping", timeout=10, metadata=metadata).decode()
                outcome = "OK"
            except grpc.RpcError as e:
                outcome = f"{e.code().name} {e.details()}"
                initial = dict(e.initial_metadata() or ())
                trailing = dict(e.trailing_metadata() or ())
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
    print(json.dumps({"outcomes": outcomes, "reply": reply, "initial": initial, "trailing": trailing}), flush=True)


async def ws_server(port):
    import websockets

    async def echo(ws):
        async for message in ws:
            await ws.send(message)

    async with websockets.serve(echo, "127.0.0.1", int(port)):
        print("ready", flush=True)
        await asyncio.Future()


async def ws_client(url):
    import websockets

    async with websockets.connect(url, open_timeout=10) as ws:
        for i in range(20):
            msg = f"message {i} " + "x" * i * 100
            await ws.send(msg)
            back = await asyncio.wait_for(ws.recv(), 10)
            assert back == msg, back[:40]
    print("ok", flush=True)


# Raw HTTP/2 frames for the abuse tests (no library: they must send what a library won't).

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def frame(ftype, flags, stream, payload):
    return struct.pack(">I", len(payload))[1:] + bytes([ftype, flags]) + struct.pack(">I", stream) + payload


def h2_connect(addr):
    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    s.sendall(PREFACE + frame(4, 0, 0, b""))
    return s


def read_frames(s, limit=1 << 20):
    """Yields (type, flags, stream, payload) until the peer closes."""
    buf = b""
    while True:
        while len(buf) < 9 or len(buf) < 9 + int.from_bytes(buf[:3], "big"):
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, socket.timeout):
                return
            if not chunk:
                return
            buf += chunk
        n = int.from_bytes(buf[:3], "big")
        yield buf[3], buf[4], int.from_bytes(buf[5:9], "big") & 0x7FFFFFFF, buf[9 : 9 + n]
        buf = buf[9 + n :]


# :method GET, :scheme http, :path /, :authority (literal, indexed name 1) "a"
REQUEST_HPACK = b"\x82\x86\x84\x41\x01a"


def h2_settings(addr):
    """Prints the server's SETTINGS as name=value lines."""
    s = h2_connect(addr)
    for ftype, flags, _, payload in read_frames(s):
        if ftype == 4 and not flags & 1:
            for i in range(0, len(payload), 6):
                ident, value = struct.unpack(">HI", payload[i : i + 6])
                print(f"{ident}={value}")
            return


def h2_rapid_reset(addr):
    """Opens and cancels streams as fast as it can; prints how many it sent before the
    server closed the connection, and the GOAWAY error code if one came."""
    s = h2_connect(addr)
    sent = 0
    try:
        for i in range(5000):
            stream = 1 + 2 * i
            s.sendall(frame(1, 0x4 | 0x1, stream, REQUEST_HPACK) + frame(3, 0, stream, struct.pack(">I", 8)))
            sent += 1
    except (BrokenPipeError, ConnectionResetError):
        pass
    goaway = None
    for ftype, _, _, payload in read_frames(s):
        if ftype == 7:
            goaway = struct.unpack(">I", payload[4:8])[0]
    print(f"sent={sent} goaway={goaway}")


def h2_continuation_flood(addr):
    """Sends one header block that never ends: HEADERS without END_HEADERS, then endless
    CONTINUATION frames. Prints how many bytes went out before the server closed."""
    s = h2_connect(addr)
    block = b"\x40\x05x-abc\x7f\x81\x7f" + b"v" * 16000  # a ~16 KB literal header
    sent = 0
    try:
        s.sendall(frame(1, 0, 1, REQUEST_HPACK))
        for _ in range(2000):  # ~32 MB if nobody stops it
            s.sendall(frame(9, 0, 1, block))
            sent += len(block)
    except (BrokenPipeError, ConnectionResetError, socket.timeout):
        pass
    print(f"sent={sent}")


def h2_tunnel(addr, authority):
    """CONNECT over HTTP/2 (RFC 9113 section 8.5), then bytes that are no HTTP through the
    stream; prints "status=S echo=HEX" (what came back within 10 s) and "ended=1" if the
    server ended the stream after the client ended its side."""
    import h2.config
    import h2.connection
    import h2.events

    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    stream = conn.get_next_available_stream_id()
    conn.send_headers(stream, [(":method", "CONNECT"), (":authority", authority)])
    s.sendall(conn.data_to_send())
    payload = b"\x00\x01tunnelled\xff"
    status, echo, ended, sent, closed = None, b"", False, False, False
    while not ended:
        data = s.recv(65536)
        if not data:
            break
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                status = dict(event.headers).get(b":status", b"?").decode()
                if status == "200":
                    conn.send_data(stream, payload)
                    sent = True
            elif isinstance(event, h2.events.DataReceived):
                echo += event.data
                conn.acknowledge_received_data(event.flow_controlled_length, stream)
                if len(echo) >= len(payload) and not closed:
                    conn.end_stream(stream)
                    closed = True
            elif isinstance(event, (h2.events.StreamEnded, h2.events.StreamReset)):
                ended = isinstance(event, h2.events.StreamEnded)
                break
        s.sendall(conn.data_to_send())
        if status is not None and status != "200":
            break
    print(f"status={status} echo={echo.hex()} sent={int(sent)} ended={int(ended)}")


def h2_padded_header(addr):
    """A GET with `x-a: " v"`, sent as is (the library would refuse or trim it)."""
    import h2.config
    import h2.connection
    import h2.events

    host, port = addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=10)
    config = h2.config.H2Configuration(
        client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False
    )
    conn = h2.connection.H2Connection(config)
    conn.initiate_connection()
    request = [(":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "a.test")]
    conn.send_headers(1, request + [("x-a", " v")], end_stream=True)
    s.sendall(conn.data_to_send())
    while True:
        data = s.recv(65536)
        if not data:
            print("closed")
            return
        for event in conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                print(f"status={dict(event.headers)[b':status'].decode()}")
                return
            if isinstance(event, h2.events.StreamReset):
                print(f"reset={int(event.error_code)}")
                return
        s.sendall(conn.data_to_send())


def http1_server(port):
    import http.server

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):
            body = b"http/1 only\n"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", int(port)), Handler)
    print("ready", flush=True)
    server.serve_forever()


COMMANDS = {
    "grpc-server": grpc_server,
    "grpc-client": grpc_client,
    "grpc-call": grpc_call,
    "grpc-calls": grpc_calls,
    "ws-server": lambda port: asyncio.run(ws_server(port)),
    "ws-client": lambda url: asyncio.run(ws_client(url)),
    "http1-server": http1_server,
    "h2-settings": h2_settings,
    "h2-rapid-reset": h2_rapid_reset,
    "h2-continuation-flood": h2_continuation_flood,
    "h2-tunnel": h2_tunnel,
    "h2-padded-header": h2_padded_header,
}

if __name__ == "__main__":
    if len(sys.argv) < 3 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: peers.py {{{'|'.join(COMMANDS)}}} ARG...")
    COMMANDS[sys.argv[1]](*sys.argv[2:])
