#!/usr/bin/env python3
"""A counting TCP proxy on loopback: what goes over the wire, measured outside both programs.

    countproxy.py --leg up=127.0.0.1:50051 --leg down=127.0.0.1:50051 --leg rsync=127.0.0.1:873

Each leg listens on a port of its own on 127.0.0.1 (printed as `listening NAME PORT`, then
`ready` once every leg listens) and forwards every connection made to it to the leg's target,
counting the TCP payload bytes each way: `up` from the connecting side to the target, `down`
back. A line `stats` on stdin is answered on stdout with one JSON line,
{"NAME": {"up": BYTES, "down": BYTES, "connections": N}, ...}; the end of stdin ends the proxy.

Forwarding is paced by the slower side (reading from one side pauses while the other side's
send buffer is full), so the proxy holds at most a few hundred KiB per connection, whatever it
forwards. Half-closes are passed on, so protocols that end a direction (rsync) work through it.
"""

import argparse
import asyncio
import json
import sys
import threading

# Bytes a side may have waiting to be sent before the other side stops being read.
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class Counter:
    def __init__(self):
        self.up = 0
        self.down = 0
        self.connections = 0


class Side(asyncio.Protocol):
    """One end of a forwarded connection; `peer` is the other end, `direction` what the bytes
    this end receives count as."""

    def __init__(self, counter, direction):
        self.counter = counter
        self.direction = direction
        self.transport = None
        self.peer = None
        self.pending = []  # bytes received before the peer was connected

    def connection_made(self, transport):
        self.transport = transport
        transport.set_write_buffer_limits(HIGH_WATER, LOW_WATER)

    def data_received(self, data):
        setattr(self.counter, self.direction, getattr(self.counter, self.direction) + len(data))
        if self.peer is None or self.peer.transport is None:
            self.pending.append(data)
            self.transport.pause_reading()
        else:
            self.peer.transport.write(data)

    def eof_received(self):
        if self.peer is not None and self.peer.transport is not None and self.peer.transport.can_write_eof():
            self.peer.transport.write_eof()
        return True  # keep the other direction open until the peer closes it too

    def connection_lost(self, exc):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    # The peer's send buffer is what pauses this side's reading.
    def pause_writing(self):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class Accepted(Side):
    """The end a client connected to: it is read only once the target is connected."""

    def __init__(self, counter, target):
        super().__init__(counter, "up")
        self.target = target

    def connection_made(self, transport):
        super().connection_made(transport)
        self.counter.connections += 1
        transport.pause_reading()
        asyncio.get_running_loop().create_task(self.connect())

    async def connect(self):
        host, port = self.target
        try:
            _, out = await asyncio.get_running_loop().create_connection(
                lambda: Side(self.counter, "down"), host, port)
        except OSError:
            self.transport.close()  # the target is away: so is this connection
            return
        out.peer, self.peer = self, out
        if self.transport.is_closing():
            out.transport.close()
            return
        # Whatever either side sent before both were joined goes on now.
        for a, b in ((self, out), (out, self)):
            for data in a.pending:
                b.transport.write(data)
            a.pending.clear()
            a.transport.resume_reading()


async def serve(legs):
    loop = asyncio.get_running_loop()
    servers = []
    for name, (counter, target) in legs.items():
        server = await loop.create_server(lambda c=counter, t=target: Accepted(c, t), "127.0.0.1", 0)
        servers.append(server)
        print(f"listening {name} {server.sockets[0].getsockname()[1]}", flush=True)
    print("ready", flush=True)
    done = asyncio.Event()

    def control():
        for line in sys.stdin:
            if line.strip() == "stats":
                snapshot = {n: {"up": c.up, "down": c.down, "connections": c.connections}
                            for n, (c, _) in legs.items()}
                print(json.dumps(snapshot), flush=True)
        loop.call_soon_threadsafe(done.set)

    threading.Thread(target=control, daemon=True).start()
    await done.wait()
    for s in servers:
        s.close()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--leg", action="append", required=True, metavar="NAME=HOST:PORT")
    args = ap.parse_args()
    legs = {}
    for leg in args.leg:
        name, _, target = leg.partition("=")
        host, _, port = target.rpartition(":")
        if not name or not host or not port.isdigit():
            ap.error(f"--leg {leg}: expected NAME=HOST:PORT")
        legs[name] = (Counter(), (host, int(port)))
    asyncio.run(serve(legs))


if __name__ == "__main__":
    main()
