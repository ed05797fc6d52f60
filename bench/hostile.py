#!/usr/bin/env python3
"""Hostile clients measured from outside: a server's RSS and sockets while clients misbehave.

Scenario (against a fresh `roomcast` process on loopback; it stops by itself):
  ping-flood  N unauthenticated connections send 125-byte pings as fast as they can for T s,
              never reading (small receive buffers); the server's RSS is sampled every 100 ms
              and its open sockets counted at the end (from /proc/PID).
(The never-reading-client case is measured by the e2e test
hostile::a_client_that_never_reads_loses_its_socket_within_the_grace_period.)

Usage: bench/hostile.py BIN ping-flood [--conns N] [--secs T]
Prints one JSON line with the numbers. Only loopback addresses are used.
"""
import argparse, base64, json, os, re, select, socket, struct, subprocess, sys, tempfile, time

def rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0

def sockets(pid):
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}").startswith("socket:"):
                n += 1
        except OSError:
            pass
    return n

def frame(opcode, payload, mask=b"\x01\x02\x03\x04"):
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
        head += bytes([0x80 | n])
    elif n < 65536:
        head += bytes([0x80 | 126]) + struct.pack(">H", n)
    else:
        head += bytes([0x80 | 127]) + struct.pack(">Q", n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked

def upgrade(addr, path="/ws"):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(addr)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(1)
        if not chunk:
            raise SystemExit("server closed during the handshake")
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head
    return s

def start(binary, env_extra):
    data = tempfile.mkdtemp(prefix="roomcast-hostile-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ROOMCAST_")}
    env.update({"ROOMCAST_LOG": "warn", "ROOMCAST_STORE__URL": "memory://"}, **env_extra)
    p = subprocess.Popen([binary, "standalone", "--listen", "127.0.0.1:0", "--data-dir", data],
                         stdout=subprocess.PIPE, env=env, text=True)
    for line in p.stdout:
        m = re.search(r"listening on http://(\S+)", line)
        if m:
            host, port = m.group(1).rsplit(":", 1)
            return p, (host, int(port))
    raise SystemExit("server did not start")

def ping_flood(binary, conns, secs):
    p, addr = start(binary, {})
    time.sleep(0.3)
    base = rss_kb(p.pid)
    socks = [upgrade(addr) for _ in range(conns)]
    for s in socks:
        s.setblocking(False)
    ping = frame(0x9, b"p" * 125) * 64
    peak, sent, refused = base, 0, 0
    end = time.time() + secs
    next_sample = 0
    while time.time() < end:
        for s in list(socks):
            try:
                sent += s.send(ping) // len(frame(0x9, b"p" * 125))
            except BlockingIOError:
                pass
            except OSError:
                socks.remove(s)
                refused += 1
        if time.time() >= next_sample:
            peak = max(peak, rss_kb(p.pid))
            next_sample = time.time() + 0.1
        select.select([], [], [], 0.001)
    peak = max(peak, rss_kb(p.pid))
    open_after = sockets(p.pid)
    p.terminate(); p.wait()
    return {"scenario": "ping-flood", "conns": conns, "secs": secs, "pings_sent": sent,
            "conns_ended_by_server": refused, "rss_start_kb": base, "rss_peak_kb": peak,
            "server_sockets_at_end": open_after}

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("scenario", choices=["ping-flood"])
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--secs", type=float, default=8)
    a = ap.parse_args()
    print(json.dumps(ping_flood(a.binary, a.conns, a.secs)))
