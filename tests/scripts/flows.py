#!/usr/bin/python3
"""Traffic for the forgery tests (tests/tests/forgery.rs), run inside the test's own
network namespaces with `ip netns exec`. Every loop is bounded in count and time.

  flows.py serve ADDR DIR SECONDS     HTTP on ADDR:8080 (DIR) and a UDP echo on ADDR:1123
  flows.py client ADDR SECONDS MARK   a slow download of /big from ADDR:8080 plus one UDP
                                      datagram each 100 ms to ADDR:1123; prints JSON. The
                                      moment the file MARK appears is the forged probe's.
  flows.py connect SRC DST PORT       exit 0 if a TCP connection from SRC to DST:PORT opens
                                      within 3 s, 1 if not
  flows.py listen ADDR PORT SECONDS   accept (and close) TCP connections on ADDR:PORT
  flows.py syns DST FIRST LAST PORT   one SYN (scapy) from each of a.b.c.FIRST..LAST (the
                                      /24 of DST) to DST:PORT+i
"""
import http.server
import json
import os
import socket
import socketserver
import sys
import threading
import time


def serve(addr, directory, seconds):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=directory, **kw)

        def log_message(self, *a):
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    httpd = Server((addr, 8080), Quiet)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind((addr, 1123))
    udp.settimeout(0.2)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            data, peer = udp.recvfrom(2048)
            udp.sendto(data, peer)
        except socket.timeout:
            pass
    httpd.shutdown()


def client(addr, seconds, mark):
    out = {"bytes": 0, "length": -1, "udp_sent": 0, "udp_answered": 0,
           "udp_sent_after": 0, "udp_answered_after": 0, "error": None}
    end = time.monotonic() + seconds
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.connect((addr, 1123))
    udp.settimeout(0.1)

    def ping():
        n = 0
        while time.monotonic() < end and n < 10 * seconds:
            n += 1
            after = os.path.exists(mark)
            out["udp_sent"] += 1
            out["udp_sent_after"] += after
            try:
                udp.send(b"ntp-like %d" % n)
                udp.recv(2048)
                out["udp_answered"] += 1
                out["udp_answered_after"] += after
            except OSError:
                pass
            time.sleep(0.1)

    t = threading.Thread(target=ping)
    t.start()
    try:
        s = socket.create_connection((addr, 8080), timeout=5)
        s.settimeout(5)
        s.sendall(b"GET /big HTTP/1.0\r\nHost: x\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = s.recv(4096)
            if not chunk:
                raise OSError("closed before the headers ended")
            head += chunk
        hdr, body = head.split(b"\r\n\r\n", 1)
        for line in hdr.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                out["length"] = int(line.split(b":", 1)[1])
        got = len(body)
        # Slowly: the transfer is still running when the forged probe arrives.
        while got < out["length"] and time.monotonic() < end + 10:
            chunk = s.recv(16384)
            if not chunk:
                break
            got += len(chunk)
            time.sleep(0.01)
        out["bytes"] = got
        s.close()
    except OSError as e:
        out["error"] = str(e)
    t.join()
    print(json.dumps(out))


def connect(src, dst, port):
    try:
        s = socket.create_connection((dst, int(port)), timeout=3, source_address=(src, 0))
        s.close()
        return 0
    except OSError:
        return 1


def listen(addr, port, seconds):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((addr, int(port)))
    s.listen(64)
    s.settimeout(0.2)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        try:
            c, _ = s.accept()
            c.close()
        except socket.timeout:
            pass


def syns(dst, first, last, port):
    from scapy.all import IP, TCP, send
    net = dst.rsplit(".", 1)[0]
    pkts = [IP(src="%s.%d" % (net, i), dst=dst) / TCP(sport=40000 + i, dport=int(port) + i, flags="S")
            for i in range(int(first), int(last) + 1)]
    send(pkts, verbose=0)


def main():
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "serve":
        serve(args[0], args[1], float(args[2]))
    elif cmd == "client":
        client(args[0], float(args[1]), args[2])
    elif cmd == "connect":
        sys.exit(connect(*args))
    elif cmd == "listen":
        listen(args[0], args[1], float(args[2]))
    elif cmd == "syns":
        syns(*args)
    else:
        sys.exit("unknown command " + cmd)


if __name__ == "__main__":
    main()
