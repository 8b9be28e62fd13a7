"""What one more destination costs at least: the CPU of sending bytes over loopback from Python.

Run by hand (not in CI):

    .venv/bin/python benchmarks/loopback_send.py               # 1.6 GB, every method, 3 runs each
    .venv/bin/python benchmarks/loopback_send.py --gb 0.5 --runs 1

A second registry destination adds, per byte, one send of what was read once (issue 14:
two destinations within 1.3x the CPU of one). This measures the sender's CPU only (user
and system, from ``getrusage`` of the sending thread or threads) for the ways Python can
hand bytes to a TCP socket, into a receiver in another process that discards them, so
its copies are not counted. The best of them is the floor a copier's second send cannot
go under on this machine; the difference between methods is what the data path can win.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import queue
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing import Process
from typing import Callable

MiB = 1 << 20


def receiver(listener: socket.socket) -> None:
    """Accept connections one after another and read them to their end, discarding the bytes."""
    buf = bytearray(4 * MiB)
    while True:
        conn, _ = listener.accept()
        with conn:
            while conn.recv_into(buf):
                pass
            conn.sendall(b"k")  # the sender waits for this, so every byte is counted as received


def cpu() -> tuple[float, float]:
    """User and system CPU seconds of the whole process (every sending thread)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime, r.ru_stime


def _connect(port: int, sndbuf: int | None) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    return s


def _finish(s: socket.socket) -> None:
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    s.close()


def sendall(chunk: int, sndbuf: int | None = None) -> Callable[[int, memoryview, int], None]:
    def run(port: int, data: memoryview, total: int) -> None:
        s = _connect(port, sndbuf)
        sent = 0
        while sent < total:
            s.sendall(data[:chunk])
            sent += chunk
        _finish(s)
    return run


def sendmsg(chunk: int, views: int) -> Callable[[int, memoryview, int], None]:
    """``views`` views of ``chunk`` bytes per ``sendmsg`` call (what a writev would do)."""
    def run(port: int, data: memoryview, total: int) -> None:
        s = _connect(port, None)
        sent = 0
        while sent < total:
            pieces = [data[:chunk]] * views
            while pieces:
                n = s.sendmsg(pieces)
                sent += n
                while pieces and n >= len(pieces[0]):
                    n -= len(pieces[0])
                    pieces.pop(0)
                if pieces and n:
                    pieces[0] = pieces[0][n:]
        _finish(s)
    return run


def threaded(chunk: int, depth: int) -> Callable[[int, memoryview, int], None]:
    """``sendall`` on a second thread fed through a bounded queue: the copier's hand-off per destination."""
    def run(port: int, data: memoryview, total: int) -> None:
        s = _connect(port, None)
        q: "queue.Queue[memoryview | None]" = queue.Queue(depth)

        def send() -> None:
            while (piece := q.get()) is not None:
                s.sendall(piece)

        t = threading.Thread(target=send)
        t.start()
        sent = 0
        while sent < total:
            q.put(data[:chunk])
            sent += chunk
        q.put(None)
        t.join()
        _finish(s)
    return run


def sendfile(chunk: int) -> Callable[[int, memoryview, int], None]:
    """``os.sendfile`` from a file in the page cache: no copy into user space at all."""
    def run(port: int, data: memoryview, total: int) -> None:
        with tempfile.TemporaryFile() as f:
            f.write(data[:chunk])
            f.flush()
            s = _connect(port, None)
            sent = 0
            while sent < total:
                off = 0
                while off < chunk:
                    off += os.sendfile(s.fileno(), f.fileno(), off, chunk - off)
                sent += chunk
            _finish(s)
    return run


def splice(chunk: int) -> Callable[[int, memoryview, int], None]:
    """Bytes written into a pipe (a copy) and spliced from it into the socket.

    Without ``vmsplice`` (not in Python's ``os``) user memory can only reach a pipe by a
    copy, so this is what ``os.splice`` offers a copier whose bytes are in Python objects.
    """
    def run(port: int, data: memoryview, total: int) -> None:
        r, w = os.pipe()
        try:
            fcntl.fcntl(w, fcntl.F_SETPIPE_SZ, chunk)
        except OSError:  # above /proc/sys/fs/pipe-max-size: the default size then
            pass
        s = _connect(port, None)
        sent = 0
        piece = data[: min(chunk, 64 * 1024)]
        while sent < total:
            filled = os.write(w, piece)
            left = filled
            while left:
                left -= os.splice(r, s.fileno(), left)
            sent += filled
        os.close(r)
        os.close(w)
        _finish(s)
    return run


METHODS: dict[str, Callable[[int, memoryview, int], None]] = {
    "sendall 1 MiB views (the copier today)": sendall(MiB),
    "sendall 1 MiB, queue hand-off to a thread (depth 4)": threaded(MiB, 4),
    "sendall 4 MiB views": sendall(4 * MiB),
    "sendall 16 MiB views": sendall(16 * MiB),
    "sendall 256 KiB views": sendall(256 * 1024),
    "sendall 1 MiB, SO_SNDBUF 4 MiB": sendall(MiB, 4 * MiB),
    "sendmsg 4 x 1 MiB views": sendmsg(MiB, 4),
    "sendfile from the page cache, 1 MiB calls": sendfile(MiB),
    "write to a pipe + splice into the socket": splice(MiB),
}


def measure(
    method: Callable[[int, memoryview, int], None], port: int, data: memoryview, total: int
) -> tuple[float, float, float]:
    """(user CPU-s, system CPU-s, wall seconds) of one send of ``total`` bytes."""
    (u0, s0), start = cpu(), time.monotonic()
    method(port, data, total)
    u1, s1 = cpu()
    return u1 - u0, s1 - s0, time.monotonic() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gb", type=float, default=1.6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", nargs="*", help="method names starting with these words")
    args = parser.parse_args()
    total = int(args.gb * 1e9) // (16 * MiB) * (16 * MiB)
    data = memoryview(os.urandom(16 * MiB))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    proc = Process(target=receiver, args=(listener,), daemon=True)
    proc.start()
    print(f"sender CPU for {total / 1e9:.2f} GB over loopback on {os.cpu_count()} cores, "
          f"load {os.getloadavg()[0]:.2f}, medians of {args.runs}:")
    try:
        for name, method in METHODS.items():
            if args.only and not any(name.startswith(o) for o in args.only):
                continue
            runs = [measure(method, port, data, total) for _ in range(args.runs)]
            c = statistics.median(r[0] + r[1] for r in runs)
            u = statistics.median(r[0] for r in runs)
            w = statistics.median(r[2] for r in runs)
            print(f"  {name:52s} {c:5.2f} CPU-s (user {u:.2f}) = {c / (total / 1e9):.2f} CPU-s/GB, "
                  f"{w:.2f}s wall", flush=True)
    finally:
        proc.kill()


if __name__ == "__main__":
    sys.exit(main())
