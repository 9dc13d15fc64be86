"""Build the worker's wheel on the controller, reproducibly, and print its path as JSON.

Run by the role with the controller's Python: `build_worker_wheel.py SOURCE_DIR DIST_DIR`.

- The source is copied to a temporary directory first: an in-tree build would leave `build/` and
  `*.egg-info` in the collection, and a stale `build/lib` could put deleted modules into the wheel.
- SOURCE_DATE_EPOCH fixes the timestamps inside the wheel, so the same source gives the same bytes and
  the role's copy to the instance reports a change only when the worker really changed.
- Older wheels of the worker in DIST_DIR are removed so the directory holds exactly the current one.
- A build takes seconds (pip sets up an isolated build environment), and the role runs it on every play:
  the hash of the source tree is kept next to the wheel, and an unchanged tree reuses the wheel.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Anything that is not part of the distribution, or is produced by a build.
IGNORED = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache",
                                 "tests", ".venv", ".git")
# 1980-01-01, the earliest time a zip file can record.
REPRODUCIBLE_EPOCH = "315532800"


def tree_digest(tree: Path) -> str:
    """sha256 over every file's relative path, mode and content, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in tree.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(tree)).encode() + b"\0")
        digest.update(oct(path.stat().st_mode & 0o777).encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def replace_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build(source: Path, dist: Path) -> Path:
    if not (source / "pyproject.toml").is_file():
        raise SystemExit(f"no pyproject.toml in {source}: not the worker's source tree")
    dist.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="drain-worker-build-") as tmp:
        tree = Path(tmp) / "src"
        out = Path(tmp) / "out"
        shutil.copytree(source, tree, ignore=IGNORED)
        digest = tree_digest(tree)
        stamp = dist / "source.sha256"
        previous = stamp.read_text().split() if stamp.is_file() else []
        if len(previous) == 2 and previous[0] == digest and (dist / previous[1]).is_file():
            return dist / previous[1]
        env = dict(os.environ, SOURCE_DATE_EPOCH=REPRODUCIBLE_EPOCH, PIP_DISABLE_PIP_VERSION_CHECK="1")
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(out), str(tree)],
            env=env, capture_output=True, text=True, check=False,
        )
        if proc.returncode != 0:
            raise SystemExit(f"pip wheel failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        wheels = sorted(out.glob("*.whl"))
        if len(wheels) != 1:
            raise SystemExit(f"expected one wheel from {source}, got {[w.name for w in wheels]}")
        built = wheels[0]
        distribution = built.name.split("-")[0]
        for old in dist.glob(f"{distribution}-*.whl"):
            if old.name != built.name:
                old.unlink()
        target = dist / built.name
        # Replaced, never rewritten in place: a play copying the wheel at the same moment sees the old or the
        # new file, not half of one.
        if not target.exists() or target.read_bytes() != built.read_bytes():
            replace_atomically(target, built.read_bytes())
        replace_atomically(stamp, f"{digest} {target.name}\n".encode())
        return target


def main() -> None:
    if len(sys.argv) != 3:
        raise SystemExit("usage: build_worker_wheel.py SOURCE_DIR DIST_DIR")
    wheel = build(Path(sys.argv[1]).resolve(), Path(sys.argv[2]).expanduser())
    name, version = wheel.name.split("-")[:2]
    print(json.dumps({"path": str(wheel), "file": wheel.name, "distribution": name, "version": version}))


if __name__ == "__main__":
    main()
