#!/usr/bin/python3
"""Packets nmap and hping3 cannot make, for tests/tests/input_path.rs (run inside the
test's scanner namespace; each call sends a handful of packets and exits).

  craft.py frag4 SRC DST PORT in|reverse    a SYN in 8-byte IPv4 fragments
  craft.py ext6 SRC DST PORT COUNT          a SYN behind COUNT destination-options headers
  craft.py dst6 SRC DST PORT BYTES          a SYN behind one BYTES-long destination-options header
"""
import sys

from scapy.all import IP, IPv6, IPv6ExtHdrDestOpt, PadN, TCP, fragment, send


def main():
    kind, src, dst, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    syn = TCP(sport=40000 + port, dport=port, flags="S", seq=12345)
    if kind == "frag4":
        frags = fragment(IP(src=src, dst=dst) / syn, fragsize=8)
        if sys.argv[5] == "reverse":
            frags = frags[::-1]
        for f in frags:
            send(f, verbose=0)
    elif kind == "ext6":
        p = IPv6(src=src, dst=dst)
        for _ in range(int(sys.argv[5])):
            p = p / IPv6ExtHdrDestOpt()
        send(p / syn, verbose=0)
    elif kind == "dst6":
        total = int(sys.argv[5])
        # 2 bytes of header, then PadN options (at most 257 bytes each) filling the rest.
        left, opts = total - 2, []
        while left > 0:
            n = min(left, 257)
            if left - n == 1:
                n -= 2
            opts.append(PadN(optdata=b"\0" * (n - 2)))
            left -= n
        send(IPv6(src=src, dst=dst) / IPv6ExtHdrDestOpt(options=opts, autopad=0) / syn, verbose=0)
    else:
        sys.exit(f"unknown kind {kind}")


main()
