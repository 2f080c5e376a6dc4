#!/usr/bin/env python3
"""Regenerate castore_client/pb from proto/.

The generated modules are committed so that a plain checkout imports without a build step;
tests/test_proto_drift.py runs this into a temporary directory and fails when the committed
files differ. Run it after every change under proto/.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PACKAGE = "castore_client/pb"


def generate(out_dir: pathlib.Path) -> list[pathlib.Path]:
    """Write the generated modules for every .proto under proto/castore_client/pb into out_dir."""
    sources = sorted((PROTO_DIR / PACKAGE).glob("*.proto"))
    include = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *(str(s.relative_to(PROTO_DIR)) for s in sources),
    ]
    if protoc.main(args) != 0:
        raise SystemExit("protoc failed")
    generated = out_dir / PACKAGE
    (generated / "__init__.py").write_text(
        '"""Generated protobuf and gRPC modules. Do not edit."""\n'
    )
    return sorted(p for p in generated.iterdir() if p.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--out", type=pathlib.Path, default=ROOT, help="output root (default: repo)"
    )
    args = parser.parse_args()
    for path in generate(args.out):
        print(path.relative_to(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
