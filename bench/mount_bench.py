#!/usr/bin/env python3
"""Through the mount: sequential read (cold, warm), time to first byte, find, tar c, random
4 KiB reads, and the filesystem's peak RSS. Each cold figure uses a fresh mount, so nothing
is in the mount's page cache or in the filesystem's memory; with --drop-caches the kernel's
whole page cache is emptied too (root only), which also makes the server read its disk.
Median of --runs; prints a table and writes JSON.

    python bench/mount_bench.py [--big-mib 1024] [--files 10000] [--dirs 100] [--runs 3]
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import tempfile

from harness import (
    BIG_NAME,
    MIB,
    ROOT,
    TREE_NAME,
    castore_mount,
    castore_server,
    drop_caches,
    first_byte,
    peak_rss_mib,
    populate,
    random_reads,
    sequential_read,
    shell_seconds,
)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--big-mib", type=int, default=1024)
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--dirs", type=int, default=100)
    parser.add_argument("--file-kib", type=int, default=4)
    parser.add_argument("--random-reads", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--drop-caches", action="store_true", help="empty the page cache too")
    parser.add_argument(
        "--json", type=pathlib.Path, default=ROOT / "bench/results/mount_bench.json"
    )
    args = parser.parse_args()

    samples: dict[str, list[float]] = {}

    def add(name: str, value: float) -> None:
        samples.setdefault(name, []).append(value)

    big_size = args.big_mib * MIB
    with tempfile.TemporaryDirectory(prefix="castore-bench-") as tmp:
        work = pathlib.Path(tmp)
        with castore_server(work) as address:
            populate(address, big_size, args.files, args.dirs, args.file_kib * 1024)
            mnt = work / "mnt"
            dropped = False
            for run in range(args.runs):
                log = work / f"mount-{run}.log"
                dropped = args.drop_caches and drop_caches()
                with castore_mount(address, mnt, log) as proc:
                    big = mnt / BIG_NAME
                    add("sequential read cold (MB/s)", big_size / sequential_read(big) / 1e6)
                    add("sequential read warm (MB/s)", big_size / sequential_read(big) / 1e6)
                    add("fs peak RSS after 1 GiB (MiB)", peak_rss_mib(proc.pid))
                if args.drop_caches:
                    drop_caches()
                with castore_mount(address, mnt, log):
                    small = [
                        mnt / TREE_NAME / f"dir{d:03d}" / "file0000"
                        for d in range(min(20, args.dirs))
                    ]
                    add(
                        "time to first byte (ms)",
                        statistics.median(first_byte(p) for p in small) * 1e3,
                    )
                    add(
                        "random 4 KiB reads cold (/s)",
                        args.random_reads / random_reads(mnt / BIG_NAME, args.random_reads),
                    )
                if args.drop_caches:
                    drop_caches()
                with castore_mount(address, mnt, log):
                    add(
                        "find | wc -l cold (ms)",
                        shell_seconds(f"find {mnt / TREE_NAME} | wc -l") * 1e3,
                    )
                if args.drop_caches:
                    drop_caches()
                with castore_mount(address, mnt, log):
                    add(
                        "tar cf - | wc -c cold (s)",
                        shell_seconds(f"tar cf - -C {mnt} {TREE_NAME} | wc -c"),
                    )
                    add(
                        "tar cf - | wc -c warm (s)",
                        shell_seconds(f"tar cf - -C {mnt} {TREE_NAME} | wc -c"),
                    )

    print(
        f"castore mount: {args.big_mib} MiB file, {args.files} files of {args.file_kib} KiB in "
        f"{args.dirs} directories; median of {args.runs} runs; page cache dropped: {dropped}"
    )
    medians = {name: statistics.median(values) for name, values in samples.items()}
    for name, value in medians.items():
        print(f"  {name:<34} {value:>10.2f}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    import json

    args.json.write_text(
        json.dumps(
            {
                "medians": medians,
                "samples": samples,
                "args": vars(args) | {"json": str(args.json)},
                "page_cache_dropped": dropped,
            },
            indent=2,
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
