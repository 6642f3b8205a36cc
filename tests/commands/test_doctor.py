"""`asign doctor` is run, not only its --help: every required check passes on this machine,
and it never reaches the network."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

from typer.testing import CliRunner

from asign.cli import app


def test_doctor_passes_every_required_check_offline(monkeypatch):
    attempts: list[object] = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    result = CliRunner().invoke(app, ["doctor", "--json"])
    checks = json.loads(result.stdout)
    failed = [c for c in checks if not c["ok"] and not c["optional"]]
    assert failed == [], failed
    assert result.exit_code == 0, result.output
    assert attempts == [], f"doctor tried to connect to {attempts}"
    names = {c["name"] for c in checks}
    assert {"torch", "dgl", "openslide", "antspyx", "opencv", "lmdb", "duckdb", "torchvision",
            "encoder auto"} <= names
    auto = next(c for c in checks if c["name"] == "encoder auto")
    assert auto["ok"] and "--encoder auto resolves to" in auto["detail"]


def test_doctor_command_exits_zero():
    proc = subprocess.run(
        [sys.executable, "-m", "asign.cli", "doctor"], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FAIL" not in proc.stdout
