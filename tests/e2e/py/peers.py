"""Independent HTTP peers for the e2e tests: gRPC (grpcio) and WebSocket (websockets).

usage: peers.py grpc-server PORT | grpc-client HOST:PORT | ws-server PORT | ws-client URL
Servers print "ready" once listening; clients print "ok" and exit 0 on success.
"""
import asyncio
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

    handler = grpc.method_handlers_generic_handler(
        "weft.Test",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(echo),
            "Chat": grpc.stream_stream_rpc_method_handler(chat),
            "Fail": grpc.unary_unary_rpc_method_handler(fail),
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


if __name__ == "__main__":
    cmd, arg = sys.argv[1], sys.argv[2]
    if cmd == "grpc-server":
        grpc_server(arg)
    elif cmd == "grpc-client":
        grpc_client(arg)
    elif cmd == "ws-server":
        asyncio.run(ws_server(arg))
    elif cmd == "ws-client":
        asyncio.run(ws_client(arg))
    else:
        sys.exit(f"unknown command {cmd}")
