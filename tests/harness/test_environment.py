"""Provenance of records: the git state they were written from, and the warning when a
dirty tree writes into committed results."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness.environment import dirty_files, dirty_tree_warning


def _git(repo: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True,
                   env={"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
                        "GIT_COMMITTER_EMAIL": "t@t", "HOME": str(repo), "PATH": "/usr/bin:/bin"})


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = tmp_path / "repo"
    (root / "harness").mkdir(parents=True)
    (root / "harness" / "code.py").write_text("x = 1\n")
    (root / ".gitignore").write_text("results/runs/\n")
    (root / "results" / "paper" / "records").mkdir(parents=True)
    (root / "results" / "paper" / "records" / "a.json").write_text("{}\n")
    _git(root, "init", "-q")
    _git(root, "add", ".")
    _git(root, "commit", "-qm", "init")
    return root


def test_a_clean_tree_and_rewritten_results_are_not_dirty(repo):
    assert dirty_files(repo) == []
    (repo / "results" / "paper" / "records" / "a.json").write_text('{"new": 1}\n')  # a run rewrote it
    (repo / "results" / "paper" / "records" / "b.json").write_text("{}\n")
    assert dirty_files(repo) == []
    assert dirty_tree_warning(repo / "results" / "paper", repo) is None


def test_changed_code_warns_only_for_results_under_version_control(repo, tmp_path):
    (repo / "harness" / "code.py").write_text("x = 2\n")
    (repo / "harness" / "new.py").write_text("y = 1\n")
    assert sorted(dirty_files(repo)) == ["harness/code.py", "harness/new.py"]
    warning = dirty_tree_warning(repo / "results" / "paper", repo)
    assert warning.startswith("WARNING: the working tree has 2 uncommitted change(s)")
    assert "harness/code.py" in warning and "git_dirty: true" in warning and "Commit first" in warning
    assert dirty_tree_warning(repo / "results" / "runs" / "quick", repo) is None  # ignored scratch results
    assert dirty_tree_warning(tmp_path / "elsewhere", repo) is None  # outside the work tree


def test_no_git_no_warning(tmp_path):
    assert dirty_files(tmp_path) is None
    assert dirty_tree_warning(tmp_path / "results", tmp_path) is None
