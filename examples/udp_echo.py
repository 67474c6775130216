"""UDP echo server with a Python handler (zcn.UdpSocket).

    python examples/udp_echo.py [host] [port]        default 127.0.0.1 9999
    echo hello | socat -t1 - UDP:127.0.0.1:9999
    nc -u 127.0.0.1 9999

Each datagram, up to the UDP limit, goes back to its sender; sending the
borrowed view itself means no copy. Ctrl-C stops it.
"""
import signal
import sys

import zcn


def main():
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    port = int(sys.argv[2]) if len(sys.argv) > 2 else 9999

    with zcn.UdpSocket(host, port) as sock:
        def on_datagram(peer, data, flags):
            if flags & zcn.UDP_TRUNCATED:
                return  # cut (small_only or multishot): not the sender's datagram
            sock.sendto(data, peer)

        sock.on_datagram = on_datagram
        signal.signal(signal.SIGINT, lambda *_: sock.stop())
        signal.signal(signal.SIGTERM, lambda *_: sock.stop())
        print(f"udp_echo.py listening on {sock.host} {sock.port}", flush=True)
        sock.serve_forever()
        print(sock.stats(), file=sys.stderr)


if __name__ == "__main__":
    main()
