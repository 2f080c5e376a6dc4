#!/usr/bin/env python3
"""Upload and download one large blob through `castore serve` on loopback, next to the ceiling.

The ceiling is a plain grpcio stream of the same number of bytes in 1 MiB messages, with no
hashing, chunking or storage, measured in the same run. Each measurement runs in a fresh
client process so its peak RSS is its own. Prints a table and writes JSON.

    python bench/blob_transfer.py [--size-mib 1024] [--runs 3]
                                  [--json bench/results/blob_transfer.json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pathlib
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent import futures

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MIB = 1 << 20
SEED = b"castore-fuse benchmark blob"


def payload(size: int, run: int = 0) -> Iterator[bytes]:
    """Incompressible bytes without holding them: BLAKE3 in extendable-output mode.

    Each run gets other bytes, so that no upload is deduplicated against an earlier one.
    """
    import blake3

    xof = blake3.blake3(SEED + str(run).encode())
    for offset in range(0, size, MIB):
        yield xof.digest(length=min(MIB, size - offset), seek=offset)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- roles run in child processes -------------------------------------------------------------


def role_ceiling_server(port: int, size: int) -> None:
    import grpc

    def download(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        yield from payload(size)

    def upload(requests: Iterator[bytes], context: grpc.ServicerContext) -> bytes:
        total = sum(len(r) for r in requests)
        return total.to_bytes(8, "little")

    ident = lambda b: b  # noqa: E731
    handler = grpc.method_handlers_generic_handler(
        "bench.Ceiling",
        {
            "Download": grpc.unary_stream_rpc_method_handler(download, ident, ident),
            "Upload": grpc.stream_unary_rpc_method_handler(upload, ident, ident),
        },
    )
    server = grpc.server(
        futures.ThreadPoolExecutor(4), options=[("grpc.max_receive_message_length", 64 * MIB)]
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def role_ceiling_client(port: int, size: int, direction: str) -> dict[str, float]:
    import grpc

    ident = lambda b: b  # noqa: E731
    channel = grpc.insecure_channel(
        f"127.0.0.1:{port}", options=[("grpc.max_receive_message_length", 64 * MIB)]
    )
    start = time.perf_counter()
    if direction == "download":
        call = channel.unary_stream("/bench.Ceiling/Download", ident, ident)
        total = sum(len(m) for m in call(b""))
    else:
        call = channel.stream_unary("/bench.Ceiling/Upload", ident, ident)
        total = int.from_bytes(call(payload(size)), "little")
    elapsed = time.perf_counter() - start
    assert total == size, (total, size)
    return {"seconds": elapsed, "rss_mib": peak_rss_mib()}


def role_castore_client(
    port: int, size: int, direction: str, digest_text: str, run: int
) -> dict[str, float]:
    from castore_client.chunked_reader import open_blob
    from castore_client.connect import open_services
    from castore_client.digest import B3Digest

    services = open_services(f"grpc+http://127.0.0.1:{port}")
    start = time.perf_counter()
    if direction == "upload":
        digest = services.blobs.put(payload(size, run))
        result = {"digest": str(digest)}
    else:
        reader = open_blob(services.blobs, B3Digest.parse(digest_text), size)
        total = 0
        for offset in range(0, size, MIB):
            total += len(reader.read_at(offset, MIB))
        assert total == size, (total, size)
        result = {}
    elapsed = time.perf_counter() - start
    services.close()
    return {**result, "seconds": elapsed, "rss_mib": peak_rss_mib()}


# --- the driver ---------------------------------------------------------------------------------


@contextlib.contextmanager
def background(*argv: str, ready: str) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if ready in line:
                break
        else:
            raise RuntimeError(f"{argv} exited before it was ready")
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def run_child(*args: str) -> dict[str, object]:
    out = subprocess.run(
        [sys.executable, __file__, *args], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--json", type=pathlib.Path, default=ROOT / "bench/results/blob_transfer.json"
    )
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--direction", help=argparse.SUPPRESS)
    parser.add_argument("--digest", default="", help=argparse.SUPPRESS)
    parser.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    size = args.size_mib * MIB

    if args.role == "ceiling-server":
        role_ceiling_server(args.port, size)
        return 0
    if args.role == "ceiling-client":
        print(json.dumps(role_ceiling_client(args.port, size, args.direction)))
        return 0
    if args.role == "castore-client":
        print(
            json.dumps(role_castore_client(args.port, size, args.direction, args.digest, args.run))
        )
        return 0

    results: dict[str, list[dict[str, object]]] = {
        k: [] for k in ("ceiling upload", "ceiling download", "castore upload", "castore download")
    }
    ceiling_port = free_port()
    common = ["--size-mib", str(args.size_mib)]
    ceiling_server = [sys.executable, __file__, "--role", "ceiling-server"]
    with background(*ceiling_server, "--port", str(ceiling_port), *common, ready="ready"):
        for run in range(args.runs):
            for direction in ("upload", "download"):
                results[f"ceiling {direction}"].append(
                    run_child(
                        "--role",
                        "ceiling-client",
                        "--port",
                        str(ceiling_port),
                        "--direction",
                        direction,
                        *common,
                    )
                )
            # A fresh server each run, so no run pays for the memory the previous ones filled.
            port = free_port()
            serve = [
                sys.executable,
                "-m",
                "castore_fuse",
                "serve",
                "--store",
                "memory://",
                "--listen",
                f"grpc+http://127.0.0.1:{port}",
            ]
            with background(*serve, ready="ready on"):
                client = ["--role", "castore-client", "--port", str(port)]
                up = run_child(*client, "--direction", "upload", "--run", str(run), *common)
                results["castore upload"].append(up)
                results["castore download"].append(
                    run_child(
                        *client, "--direction", "download", "--digest", str(up["digest"]), *common
                    )
                )

    summary = {}
    for name, runs in results.items():
        seconds = statistics.median(float(r["seconds"]) for r in runs)  # type: ignore[arg-type]
        summary[name] = {
            "median_seconds": seconds,
            "median_mb_per_s": size / seconds / 1e6,
            "peak_rss_mib": max(float(r["rss_mib"]) for r in runs),  # type: ignore[arg-type]
            "runs": runs,
        }
    ratios = {
        "download / ceiling": summary["castore download"]["median_mb_per_s"]
        / summary["ceiling download"]["median_mb_per_s"],
        "upload / ceiling": summary["castore upload"]["median_mb_per_s"]
        / summary["ceiling upload"]["median_mb_per_s"],
    }
    print(f"blob of {args.size_mib} MiB over loopback, median of {args.runs} runs")
    print(f"{'measurement':<18} {'MB/s':>8} {'seconds':>8} {'client peak RSS MiB':>20}")
    for name, row in summary.items():
        print(
            f"{name:<18} {row['median_mb_per_s']:>8.0f} {row['median_seconds']:>8.2f} "
            f"{row['peak_rss_mib']:>20.0f}"
        )
    for name, ratio in ratios.items():
        print(f"{name:<18} {ratio:>8.0%}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {"size_bytes": size, "runs": args.runs, "summary": summary, "ratios": ratios}, indent=2
        )
    )
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
