"""A peer written with Twisted's TLSMemoryBIOProtocol, for interop tests.

Twisted nests TLS by wrapping factories: layer 1 wraps layer 2 wraps an echo
protocol, all set up when the connection opens.  Each line received at the
innermost layer is answered with ``echo: <line>``; ``QUIT`` closes.

Usage: twisted_peer.py (--listen | --connect PORT) --roles s,c --dir CERTDIR
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from twisted.internet import protocol, reactor, ssl
from twisted.protocols.basic import LineOnlyReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory


class Echo(LineOnlyReceiver):
    delimiter = b"\n"
    MAX_LENGTH = 10_000_000

    def lineReceived(self, line: bytes) -> None:
        if line == b"QUIT":
            self.sendLine(b"BYE")
            self.transport.loseConnection()
            return
        self.sendLine(b"echo: " + line)

    def connectionLost(self, reason: object) -> None:
        print(f"twisted peer: done ({reason})", flush=True)
        if reactor.running:
            reactor.callLater(0, reactor.stop)


def wrapped(roles: list[str], certdir: Path) -> protocol.Factory:
    # A ClientFactory works for both directions (connectTCP needs its hooks).
    factory: protocol.Factory = protocol.ClientFactory.forProtocol(Echo)
    ca = ssl.Certificate.loadPEM((certdir / "ca.pem").read_bytes())
    for depth in range(len(roles), 0, -1):
        role = roles[depth - 1]
        if role == "s":
            cert = ssl.PrivateCertificate.loadPEM((certdir / f"layer{depth}.pem").read_bytes())
            options = cert.options()
        else:
            options = ssl.optionsForClientTLS(f"layer{depth}.onion.test", trustRoot=ca)
        factory = TLSMemoryBIOFactory(options, role == "c", factory)
    return factory


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--listen", action="store_true")
    ap.add_argument("--connect", type=int)
    ap.add_argument("--roles", required=True)
    ap.add_argument("--dir", type=Path, required=True)
    args = ap.parse_args()
    factory = wrapped(args.roles.split(","), args.dir)
    if args.listen:
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        print(port.getHost().port, flush=True)
    else:
        reactor.connectTCP("127.0.0.1", args.connect, factory)
    reactor.callLater(30, reactor.stop)
    reactor.run()


if __name__ == "__main__":
    main()
    sys.exit(0)
