"""The contract every failing command keeps: exit 1, no traceback, one `error:` line that
names the fix (shared by the bad-input and shared-store suites)."""

from __future__ import annotations


def one_error(code: int, stderr: str) -> str:
    """The single `error:` line of a failed command (exit 1, no traceback)."""
    assert code == 1, stderr
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, stderr
    assert " Fix: " in lines[0]
    return lines[0]
