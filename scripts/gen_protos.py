"""Regenerate the Python code in ``generated/`` from ``protos/``.

Runs grpcio-tools' protoc with the Python, gRPC and mypy-protobuf plugins into a
temporary directory, adds the package ``__init__.py`` files, and swaps the tree into
place. Never edit ``generated/`` by hand; CI runs ``scripts/check_generated.sh``, which
reruns this script and fails on any diff.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"
OUT = ROOT / "generated"

_INIT_DOC = '"""Generated from protos/ by scripts/gen_protos.py. Do not edit."""\n'


def main() -> int:
    protos = sorted(p.relative_to(PROTOS).as_posix() for p in PROTOS.rglob("*.proto"))
    if not protos:
        print("no .proto files under protos/", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "generated"
        out.mkdir()
        bindir = Path(sys.executable).parent
        cmd = [
            sys.executable,
            "-m",
            "grpc_tools.protoc",
            f"--plugin=protoc-gen-mypy={bindir / 'protoc-gen-mypy'}",
            f"--plugin=protoc-gen-mypy_grpc={bindir / 'protoc-gen-mypy_grpc'}",
            f"--proto_path={PROTOS}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            f"--mypy_out={out}",
            f"--mypy_grpc_out={out}",
            *protos,
        ]
        subprocess.run(cmd, check=True, cwd=PROTOS)
        # Every directory holding generated modules becomes a regular package, so
        # `podium.orchestration.v1` imports without namespace-package surprises.
        for directory in sorted({p.parent for p in out.rglob("*.py")}):
            while directory != out:
                init = directory / "__init__.py"
                if not init.exists():
                    init.write_text(_INIT_DOC)
                directory = directory.parent
        (out / "podium" / "py.typed").write_text("")
        if OUT.exists():
            shutil.rmtree(OUT)
        shutil.copytree(out, OUT)
    print(f"generated {len(protos)} proto files into {OUT.relative_to(ROOT)}/")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
