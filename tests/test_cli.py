"""The pycsa command as a user runs it."""
from __future__ import annotations

import json
import subprocess
import sys

import pycsa
from pycsa.cli import main


def test_demo_prints_a_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "demo.json"
    assert main(["demo", "--preset", "small", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "cosine (initial search)" in text and "hard mAP" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows][1:] == pycsa.available()
    for r in rows:
        assert 0 <= float(r["medium mAP"]) <= 100


def test_console_script_lists_methods():
    res = subprocess.run([sys.executable, "-m", "pycsa.cli", "methods"], capture_output=True, text=True, check=True)
    assert res.stdout.split() == pycsa.available()


def test_bad_arguments_exit_cleanly(capsys):
    assert main(["demo", "--preset", "small", "--methods", "nope"]) == 2
    assert "unknown re-ranker" in capsys.readouterr().err
