"""A bandwidth-limited TCP link in front of each storage node, for `bench striping --link-mb-s`.

On one machine every node shares the same disk, page cache and loopback, so "faster than one
node can serve" cannot show: a single node answers from memory as fast as the reader can
verify and decrypt. In a region each node sits behind its own disk and network link (a
hospital's 1 Gb/s uplink is 125 MB/s). This process puts such a link in front of every node:
one token bucket per node and direction, shared by all of that node's connections, so a node
can never send more than ``--mb-s`` in total however many requests it serves at once.

It runs as its own process (``python -m medshard.bench.link --mb-s 100 LISTEN=HOST:PORT ...``)
so that forwarding costs the reader's process nothing; it prints one ``ready`` line once every
listener is bound.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time

PIECE = 64 * 1024


class TokenBucket:
    """``rate`` bytes per second, bursts of at most ``burst`` bytes."""

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, burst
        self.tokens = burst
        self.stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, n: int) -> None:
        async with self._lock:  # one sender at a time: the link is shared, and fair enough
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            if self.tokens < 0:
                await asyncio.sleep(-self.tokens / self.rate)


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: TokenBucket
) -> None:
    try:
        while data := await reader.read(PIECE):
            await bucket.take(len(data))
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        pass
    finally:
        writer.close()


async def _serve(listen: int, target: tuple[str, int], rate: float) -> asyncio.Server:
    down, up = TokenBucket(rate, PIECE * 4), TokenBucket(rate, PIECE * 4)

    async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            node_reader, node_writer = await asyncio.open_connection(*target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(_pump(reader, node_writer, up), _pump(node_reader, writer, down))

    return await asyncio.start_server(connection, "127.0.0.1", listen)


async def _main(links: list[tuple[int, tuple[str, int]]], rate: float) -> None:
    servers = [await _serve(listen, target, rate) for listen, target in links]
    print("ready", flush=True)
    await asyncio.gather(*(s.serve_forever() for s in servers))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb-s", type=float, required=True, help="each link's rate, MB/s")
    parser.add_argument("links", nargs="+", help="LISTEN_PORT=HOST:PORT")
    args = parser.parse_args(argv)
    links = []
    for spec in args.links:
        listen, _, target = spec.partition("=")
        host, _, port = target.rpartition(":")
        links.append((int(listen), (host, int(port))))
    try:
        asyncio.run(_main(links, args.mb_s * 1e6))
    except KeyboardInterrupt:
        sys.exit(0)


if __name__ == "__main__":
    main()
