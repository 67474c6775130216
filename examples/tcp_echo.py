"""A TCP echo server with the zcn Python API, in a few lines.

    python examples/tcp_echo.py [PORT]        (default 9000; 0 = any free port)
    (after `pip install .`; from a source checkout: PYTHONPATH=. and
    ZCN_LIBRARY=build/libzero_copy_net.so)
    printf 'hello\n' | nc -N 127.0.0.1 9000
    echo hello | socat - TCP:127.0.0.1:9000

Every message is sent back without a copy: ``data`` is a read-only view of
the receive buffer, and send() of that view moves the buffer to the send
queue. Ctrl-C stops it.
"""
import signal
import sys

import zcn


def main():
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 9000
    with zcn.TcpServer("127.0.0.1", port) as server:

        def on_data(fd, data):
            try:
                server.send(fd, data)  # data is borrowed: valid during this call only
            except zcn.ClosedError:
                pass  # the peer reset the connection in this batch

        server.on_data = on_data
        server.on_accept = lambda fd: print(f"connection {fd} open", flush=True)
        server.on_close = lambda fd: print(f"connection {fd} closed", flush=True)
        signal.signal(signal.SIGINT, lambda *_: server.stop())
        signal.signal(signal.SIGTERM, lambda *_: server.stop())
        print(f"echo server on {server.host}:{server.port}", flush=True)
        server.serve_forever()
        print(server.stats())


if __name__ == "__main__":
    main()
