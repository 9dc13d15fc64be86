"""bench/get_latency.py --baseline: the checkout of REV is linked where Ansible looks for the collection and is gone
afterwards, and a payload counts only if its collection files are the checkout's it had to come from."""

from __future__ import annotations

import io
import subprocess
import zipfile

import pytest

from bench import get_latency as bench

OURS = bench.COLLECTION_PREFIX


def worktrees():
    return subprocess.run(["git", "-C", str(bench.REPO), "worktree", "list", "--porcelain"], capture_output=True,
                          text=True, check=True).stdout


def zip_of(files):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as payload:
        for name, body in files.items():
            payload.writestr(name, body)
    return buffer.getvalue()


def test_the_baseline_is_linked_as_the_collection_and_removed_after(tmp_path):
    with bench.Baseline("HEAD", tmp_path) as baseline:
        pool = baseline.collections / "ansible_collections" / "ec2spot" / "pool"
        head_galaxy = subprocess.run(["git", "-C", str(bench.REPO), "show", "HEAD:galaxy.yml"], capture_output=True,
                                     check=True).stdout
        assert (pool / "galaxy.yml").read_bytes() == head_galaxy
        assert str(baseline.source) in worktrees()
    assert not baseline.source.exists()
    assert str(baseline.source) not in worktrees()


def test_an_unknown_revision_is_a_bench_failure(tmp_path):
    with pytest.raises(bench.BenchFailure):
        bench.Baseline("no-such-revision-anywhere", tmp_path)


def test_a_payload_of_the_checkouts_files_is_counted(tmp_path):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "a.py").write_bytes(b"x = 1\n")
    data = zip_of({OURS + "plugins/a.py": b"x = 1\n", OURS + "plugins/__init__.py": b"",
                   "ansible/module_utils/basic.py": b"# Ansible's own\n"})
    summary = bench.payload_summary(data, tmp_path)
    assert (summary["bytes"], summary["files"]) == (len(data), 3)
    assert set(summary["ours"]) == {"plugins/a.py", "plugins/__init__.py"}


@pytest.mark.parametrize("member, body", [("plugins/a.py", b"x = 2\n"), ("plugins/b.py", b""),
                                          ("plugins/__init__.py", b"import os\n")])
def test_a_payload_with_a_file_the_checkout_does_not_hold_is_refused(tmp_path, member, body):
    (tmp_path / "plugins").mkdir()
    (tmp_path / "plugins" / "a.py").write_bytes(b"x = 1\n")
    files = {OURS + "plugins/a.py": b"x = 1\n"}
    files[OURS + member] = body
    with pytest.raises(bench.BenchFailure, match=member):
        bench.payload_summary(zip_of(files), tmp_path)
