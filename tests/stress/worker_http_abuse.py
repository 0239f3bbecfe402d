#!/usr/bin/env python3
"""Abuses a krul-worker's HTTP port the way issue 17 did, and prints what it did to it.

  tests/stress/worker_http_abuse.py BUILD/bin/krul-worker [extra worker flags...]

Starts the worker (synthetic model, loopback, ephemeral port), then
  1. opens 20 slow connections (10 send headers at one byte a second, 10 send their headers
     at once and then a body at one byte a second) and times 5 GET /healthz on fresh
     connections while they hang on (timeout 3 s each);
  2. sends a 200 MB chunked POST /v1/chat/completions, stopping as soon as an answer comes,
     and reads the worker's VmRSS before and after;
  3. runs 20 keep-alive clients (one connection each, reused) of 20 GET /v1/models 50 ms apart
     and prints the latency percentiles and at which request index the slow (> 50 ms) ones were;
then SIGTERMs it. Bounded: about 20 s. The CTest twin with assertions is
tests/services/worker/process/http_hardening_test.cc; this script also runs against old binaries
(it passes no flag they lack) to measure the before side.
"""
import http.client
import re
import select
import socket
import subprocess
import sys
import threading
import time

SLOW = 20
BODY_MB = 200


def main():
    binary, extra = sys.argv[1], sys.argv[2:]
    proc = subprocess.Popen(
        [binary, '--host=127.0.0.1', '--http_port=0', '--synthetic',
         '--synthetic_shape=64,172,2,8,4,512,256', '--threads=1', '--probe_compute=false',
         '--probe_load=false', '--freeze_costs'] + extra,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = None
        for line in proc.stdout:
            m = re.search(r'listening on .*:(\d+)', line)
            if m:
                port = int(m.group(1))
                break
        if port is None:
            sys.exit('the worker did not start')
        run(proc.pid, port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def rss_mb(pid):
    with open(f'/proc/{pid}/status') as f:
        for line in f:
            if line.startswith('VmRSS'):
                return int(line.split()[1]) / 1024
    return 0


def healthz(port, timeout):
    start = time.time()
    s = socket.create_connection(('127.0.0.1', port))
    s.settimeout(timeout)
    try:
        s.sendall(b'GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n')
        head = s.recv(64).split(b'\r\n')[0].decode()
    except OSError as e:
        head = type(e).__name__
    finally:
        s.close()
    return (time.time() - start) * 1000, head


def run(pid, port):
    slow = []
    for i in range(SLOW):
        s = socket.create_connection(('127.0.0.1', port))
        if i % 2:
            s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n'
                      b'Content-Length: 100\r\n\r\n')
        slow.append(s)
    stop = threading.Event()

    def drip():
        while not stop.is_set():
            for s in slow:
                try:
                    s.send(b'a')
                except OSError:
                    pass
            stop.wait(1)

    threading.Thread(target=drip, daemon=True).start()
    time.sleep(0.5)  # let every slow connection be accepted
    probes = [healthz(port, 3.0) for _ in range(5)]
    print(f'{SLOW} slow connections: GET /healthz ' +
          ', '.join(f'{ms:.1f} ms {head!r}' for ms, head in probes))
    stop.set()
    for s in slow:
        s.close()

    before = rss_mb(pid)
    s = socket.create_connection(('127.0.0.1', port))
    s.settimeout(10)
    s.sendall(b'POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n'
              b'Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n')
    chunk = b'%x\r\n' % 65536 + b'x' * 65536 + b'\r\n'
    sent = 0
    try:
        while sent < BODY_MB << 20:
            if select.select([s], [], [], 0)[0]:
                break  # answered before the end
            s.sendall(chunk)
            sent += 65536
        if sent >= BODY_MB << 20:
            s.sendall(b'0\r\n\r\n')
        answer = s.recv(64).split(b'\r\n')[0].decode()
    except OSError as e:
        answer = type(e).__name__
    s.close()
    print(f'{BODY_MB} MB chunked body: {sent >> 20} MB sent before the answer {answer!r}, '
          f'VmRSS {before:.0f} -> {rss_mb(pid):.0f} MB')

    lock = threading.Lock()
    latencies, slow_at, errors = [], [], [0]

    def keep_alive_client():
        conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
        for i in range(20):
            start = time.time()
            try:
                conn.request('GET', '/v1/models')
                conn.getresponse().read()
            except (OSError, http.client.HTTPException):
                with lock:
                    errors[0] += 1
                conn = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
                continue
            ms = (time.time() - start) * 1000
            with lock:
                latencies.append(ms)
                if ms > 50:
                    slow_at.append(i)
            time.sleep(0.05)

    clients = [threading.Thread(target=keep_alive_client) for _ in range(20)]
    for c in clients:
        c.start()
    for c in clients:
        c.join()
    latencies.sort()
    print(f'20 keep-alive clients x 20 requests: {len(latencies)} ok, {errors[0]} errors, '
          f'p50 {latencies[len(latencies) // 2]:.1f} ms, '
          f'p99 {latencies[len(latencies) * 99 // 100]:.1f} ms, max {latencies[-1]:.1f} ms; '
          f'slow (> 50 ms) at request index {sorted(slow_at)}')


if __name__ == '__main__':
    main()
