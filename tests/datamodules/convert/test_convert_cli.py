"""The command line: a real `python -m datamodules.convert` run, its summary, its errors, stock webdataset."""
from __future__ import annotations

import json
import subprocess
import sys

import webdataset as wds

from datamodules.convert.__main__ import main

from .helpers import write_json, write_jsonl
from .test_convert_stride import ROWS as STRIDE_ROWS
from .test_convert_youcook2 import _database


def test_module_entry_point_writes_shards_and_reports_missing_videos(videos, tmp_path):
    annotations = write_json(tmp_path / "youcookii_annotations_trainval.json", _database())
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "datamodules.convert", "youcook2", str(annotations), "--videos", str(videos),
         "--out", str(out), "--split", "val", "--shard-size", "1"],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "wrote 1 samples" in result.stdout
    assert "skipped 2 videos missing from the folder: cookB, cookC" in result.stdout
    assert "missing video 'cookB'" in result.stderr           # the log line, as it happens
    assert "youcook2 -> val" in result.stderr                  # the progress bar
    assert [p.name for p in (out / "val").iterdir()] == ["shard-000000.tar"]
    report = json.loads((out / "convert-youcook2-val.json").read_text())
    assert [name for name, _ in report["missing"]] == ["cookB", "cookC"]
    # A stock webdataset pipeline reads the shard.
    samples = list(wds.WebDataset(str(out / "val" / "shard-000000.tar"), shardshuffle=False))
    assert len(samples) == 1 and {"__key__", "mp4", "json"} <= set(samples[0])
    assert json.loads(samples[0]["json"])["key"] == samples[0]["__key__"] == "youcook2-val-000000"


def test_malformed_row_exits_with_its_file_row_and_key(videos, tmp_path, capsys):
    bad = [STRIDE_ROWS[0], STRIDE_ROWS[1][:2]]
    annotations = write_jsonl(tmp_path / "stride.jsonl", bad)
    code = main(["stride", str(annotations), "--videos", str(videos), "--out", str(tmp_path / "out"), "--no-progress"])
    assert code == 2
    assert "stride.jsonl: row 2: key 'type': no item of type 'activation_output'" in capsys.readouterr().err


def test_on_error_skip_reports_the_row_and_goes_on(videos, tmp_path, capsys):
    annotations = write_jsonl(tmp_path / "stride.jsonl", [STRIDE_ROWS[1][:2], STRIDE_ROWS[2]])
    code = main(["stride", str(annotations), "--videos", str(videos), "--out", str(tmp_path / "out"),
                 "--on-error", "skip", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0 and "wrote 1 samples" in out
    assert "skipped 1 items on error" in out and "stride.jsonl:1" in out


def test_missing_videos_folder_is_a_clear_error(tmp_path, capsys):
    annotations = write_jsonl(tmp_path / "stride.jsonl", STRIDE_ROWS)
    assert main(["stride", str(annotations), "--videos", str(tmp_path / "nowhere"), "--out", str(tmp_path)]) == 2
    assert "videos: no such directory" in capsys.readouterr().err
