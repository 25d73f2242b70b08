"""Build a release of Podium into ``dist/`` (``make release``), or set its version.

One version (the ``VERSION`` file) names the contracts, the server and the SDKs:

- ``python scripts/release.py``: checks that every place agrees with ``VERSION`` and
  that the contract of that version is stored (``protos/released/vX.Y.Z.binpb``, which
  ``buf breaking`` compares later versions with), then builds into an emptied ``dist/``
  the sdist and wheel of the SDK ``podium-client`` and of the server ``podium`` (each
  wheel from its sdist, as PyPA's ``build`` does) and the npm tarball ``podium-client``,
  runs ``twine check --strict`` on the Python files, and writes ``dist/SHA256SUMS``
  (``sha256sum -c SHA256SUMS`` verifies it).
- ``python scripts/release.py --set-version X.Y.Z``: writes the version to ``VERSION``,
  the server's ``podium-client==`` pin and the Node package (and its lockfile).

Nothing is uploaded: publishing (``twine upload``, ``npm publish`` of the tarball) is a
maintainer's step after review.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
SDK = ROOT / "clients" / "python-client"
NODE = ROOT / "clients" / "node"
VERSION_FILE = ROOT / "VERSION"
SDK_PIN = re.compile(r'"podium-client==[^"]*"')
SEMVER = re.compile(r"\d+\.\d+\.\d+")


class ReleaseError(Exception):
    """A release cannot be built as things are (the message says what to do)."""


def read_version() -> str:
    return VERSION_FILE.read_text().strip()


def version_problems(version: str) -> list[str]:
    """Every place that does not carry ``version`` (empty: all agree)."""
    problems = []
    if not SEMVER.fullmatch(version):
        problems.append(f"VERSION {version!r} is not MAJOR.MINOR.PATCH")
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    if f"podium-client=={version}" not in dependencies:
        problems.append(f"pyproject.toml does not depend on podium-client=={version}")
    package = json.loads((NODE / "package.json").read_text())
    if package["version"] != version:
        problems.append(f"clients/node/package.json has version {package['version']}")
    lock = json.loads((NODE / "package-lock.json").read_text())
    if lock["version"] != version or lock["packages"][""]["version"] != version:
        problems.append("clients/node/package-lock.json has another version")
    return problems


def set_version(version: str) -> None:
    if not SEMVER.fullmatch(version):
        raise ReleaseError(f"{version!r} is not MAJOR.MINOR.PATCH")
    VERSION_FILE.write_text(version + "\n")
    pyproject = ROOT / "pyproject.toml"
    text, count = SDK_PIN.subn(f'"podium-client=={version}"', pyproject.read_text())
    if count != 1:
        raise ReleaseError("pyproject.toml: no single podium-client== dependency to update")
    pyproject.write_text(text)
    npm = ["npm", "version", version, "--no-git-tag-version", "--allow-same-version"]
    subprocess.run(npm, cwd=NODE, check=True, stdout=subprocess.DEVNULL)


def _run(*command: str | Path, cwd: Path = ROOT) -> None:
    print("+", " ".join(str(part) for part in command), flush=True)
    subprocess.run([str(part) for part in command], cwd=cwd, check=True)


def sha256sums(directory: Path) -> str:
    """``sha256sum``'s format for every file of ``directory`` but SHA256SUMS itself."""
    lines = []
    for path in sorted(directory.iterdir()):
        if path.is_file() and path.name != "SHA256SUMS":
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    return "".join(lines)


def build_python(dist: Path) -> None:
    """The sdists and wheels of podium-client and podium into ``dist``.

    The ``*.egg-info`` directories an editable install or an earlier build left in the
    projects go first: setuptools adds the files their ``SOURCES.txt`` lists to a new
    sdist, which would put the SDK's files into the server's sdist.
    """
    for project in (SDK, ROOT):
        for metadata in project.glob("*.egg-info"):
            shutil.rmtree(metadata)
        _run(sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, project)


def build(version: str, dist: Path = DIST) -> list[Path]:
    """Build every artifact of ``version`` into an emptied ``dist``; returns them."""
    problems = version_problems(version)
    if problems:
        raise ReleaseError("versions disagree: " + "; ".join(problems))
    contract = ROOT / "protos" / "released" / f"v{version}.binpb"
    if not contract.is_file():
        raise ReleaseError(
            f"no stored contract for {version}: run `make buf-baseline VERSION=v{version}` "
            f"and commit {contract.relative_to(ROOT)}"
        )
    if dist.exists():
        shutil.rmtree(dist)
    dist.mkdir(parents=True)
    build_python(dist)
    _run("npm", "pack", "--loglevel=error", "--pack-destination", dist, cwd=NODE)
    python_files = sorted(p for p in dist.iterdir() if p.suffix in {".whl", ".gz"})
    _run(sys.executable, "-m", "twine", "check", "--strict", *python_files)
    expected = {
        f"podium_client-{version}-py3-none-any.whl",
        f"podium_client-{version}.tar.gz",
        f"podium-{version}-py3-none-any.whl",
        f"podium-{version}.tar.gz",
        f"podium-client-{version}.tgz",
    }
    built = {path.name for path in dist.iterdir()}
    if built != expected:
        raise ReleaseError(f"dist/ holds {sorted(built)}, expected {sorted(expected)}")
    (dist / "SHA256SUMS").write_text(sha256sums(dist))
    return sorted(dist.iterdir())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--set-version", metavar="X.Y.Z", help="set the version everywhere")
    args = parser.parse_args(argv)
    try:
        if args.set_version:
            set_version(args.set_version)
            print(f"version {args.set_version}: VERSION, pyproject.toml, clients/node")
            return 0
        for path in build(read_version()):
            print(f"{path.relative_to(ROOT)}  {path.stat().st_size} bytes")
    except ReleaseError as error:
        print(f"release: {error}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as error:
        print(f"release: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
