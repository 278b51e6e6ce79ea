"""Regenerates the Python code for the gRPC contract: `python proto/build.py`.

The contract lives here (`proto/tandem/v1/*.proto`, proto package `tandem.v1`); protoc writes
its Python modules where that package name puts them, `tandem/v1/`, so they import as
`tandem.v1.gateway_pb2`: a name only this distribution owns. The generated modules are
committed so that installing Tandem needs no protoc; a test regenerates them into a temporary
folder and fails when the committed ones are stale.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = ROOT / "proto"
PROTOS = ["tandem/v1/gateway.proto"]  # relative to PROTO_DIR, as protoc names them


def generate(out_dir: Path = ROOT) -> None:
    """Runs protoc (from grpcio-tools) over the contract, writing `tandem/v1/` under out_dir."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    include = str(resources.files("grpc_tools") / "_proto")
    args = [
        "protoc",
        f"-I{PROTO_DIR}",
        f"-I{include}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(PROTO_DIR / p) for p in PROTOS],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed: {' '.join(args)}")


if __name__ == "__main__":
    generate(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT)
