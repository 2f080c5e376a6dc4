#!/usr/bin/env python3
"""Load: concurrent readers over random ranges of multi-chunk files, every byte compared.

N reader threads pick one of F random files (several chunks each) and a random range in it,
read it through the mount with pread, and compare it with the source bytes. Reports reads,
bytes compared, errors, and the filesystem process's threads, open descriptors and RSS
before and after. The tests run a short version; this script runs the long one:

    python bench/soak.py [--readers 32] [--files 8] [--file-mib 3] [--seconds 60]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import random
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass
class Outcome:
    reads: int = 0
    bytes_compared: int = 0
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def process_figures(pid: int) -> dict[str, float]:
    status = pathlib.Path(f"/proc/{pid}/status").read_text().splitlines()
    fields = dict(line.split(":", 1) for line in status if ":" in line)
    return {
        "threads": int(fields["Threads"].strip()),
        "rss_mib": int(fields["VmRSS"].split()[0]) / 1024,
        "peak_rss_mib": int(fields["VmHWM"].split()[0]) / 1024,
        "open_fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


def hammer(
    paths: list[pathlib.Path], sources: list[bytes], readers: int, seconds: float, seed: int = 1
) -> Outcome:
    """Readers over random ranges until `seconds` pass; every byte read is compared."""
    outcome = Outcome()
    stop = time.monotonic() + seconds

    def reader(index: int) -> None:
        rng = random.Random(seed * 1000 + index)
        # O_DIRECT: every read reaches the filesystem instead of the kernel's page cache.
        fds = [os.open(p, os.O_RDONLY | os.O_DIRECT) for p in paths]
        try:
            while time.monotonic() < stop:
                which = rng.randrange(len(paths))
                data = sources[which]
                offset = rng.randrange(len(data))
                length = rng.choice([1, 4096, 65536, 131072, 1 << 20, rng.randrange(1, 1 << 20)])
                try:
                    got = os.pread(fds[which], length, offset)
                except OSError as exc:
                    with outcome.lock:
                        outcome.errors.append(f"{paths[which].name}@{offset}+{length}: {exc}")
                    continue
                if got != data[offset : offset + length]:
                    with outcome.lock:
                        outcome.errors.append(f"{paths[which].name}@{offset}+{length}: wrong bytes")
                    continue
                with outcome.lock:
                    outcome.reads += 1
                    outcome.bytes_compared += len(got)
        finally:
            for fd in fds:
                os.close(fd)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return outcome


def main() -> int:
    from castore_client.address import parse_address
    from castore_client.directory import FileNode
    from castore_client.pathinfo import NarInfo, PathInfo
    from castore_client.rpc.server import CastoreServer
    from castore_client.stores import open_memory_store

    sys.path.insert(0, str(ROOT / "bench"))
    from harness import castore_mount

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--readers", type=int, default=32)
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--file-mib", type=float, default=3)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--json", type=pathlib.Path, default=ROOT / "bench/results/soak.json")
    args = parser.parse_args()

    rng = random.Random(7)
    sources = [rng.randbytes(int(args.file_mib * (1 << 20))) for _ in range(args.files)]
    with tempfile.TemporaryDirectory(prefix="castore-soak-") as tmp, open_memory_store() as store:
        work = pathlib.Path(tmp)
        names = []
        for i, data in enumerate(sources):
            digest = store.blobs.put([data])
            name = f"{i:032d}-soak{i}"
            store.path_infos.put(
                PathInfo(
                    node=FileNode(name.encode(), digest, len(data)), narinfo=NarInfo(0, bytes(32))
                )
            )
            names.append(name)
        sock = parse_address(f"grpc+unix://{work}/s.sock")
        with (
            CastoreServer(store, sock) as server,
            castore_mount(str(server.address), work / "mnt", work / "mount.log") as proc,
        ):
            paths = [work / "mnt" / n for n in names]
            paths[0].stat()
            before = process_figures(proc.pid)
            start = time.monotonic()
            outcome = hammer(paths, sources, args.readers, args.seconds)
            elapsed = time.monotonic() - start
            time.sleep(1)
            after = process_figures(proc.pid)
    result = {
        "readers": args.readers,
        "files": args.files,
        "file_mib": args.file_mib,
        "seconds": elapsed,
        "reads": outcome.reads,
        "bytes_compared": outcome.bytes_compared,
        "errors": len(outcome.errors),
        "first_errors": outcome.errors[:10],
        "fs_before": before,
        "fs_after": after,
    }
    print(f"{args.readers} readers, {args.files} files of {args.file_mib} MiB, {elapsed:.0f} s")
    print(
        f"  reads {outcome.reads}, bytes compared {outcome.bytes_compared},"
        f" errors {len(outcome.errors)}"
    )
    print(
        f"  fs threads {before['threads']} -> {after['threads']}, open fds {before['open_fds']} -> "
        f"{after['open_fds']}, RSS {after['rss_mib']:.0f} MiB (peak {after['peak_rss_mib']:.0f})"
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 1 if outcome.errors else 0


if __name__ == "__main__":
    raise SystemExit(main())
