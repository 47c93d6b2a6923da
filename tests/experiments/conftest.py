import subprocess
import sys
from pathlib import Path

import pytest

from experiments import config as config_lib
from experiments import papers

from tests.experiments import toy_paper

REPO = Path(__file__).resolve().parents[2]


def write_small_world(root: Path, shard_size: int) -> Path:
    """A real synthetic world through the user's CLI: 8 train + 4 val + 4 test one-minute videos with features."""
    subprocess.run(
        [sys.executable, "-m", "datamodules.synthetic", "--out", str(root), "--videos", "8", "--eval-videos", "4",
         "--minutes", "1", "1", "--shard-size", str(shard_size), "--seed", "0", "--feats"],
        cwd=REPO, check=True, timeout=600,  # its output reaches pytest's capture, shown on a failure
    )
    return root


@pytest.fixture
def toy_configs(tmp_path, monkeypatch):
    """A config dir holding the real base/trainer YAMLs plus toy experiments; `toy` resolves to the toy paper."""
    cfg_dir = tmp_path / "configs"
    (cfg_dir / "trainer").mkdir(parents=True)
    (cfg_dir / "toy").mkdir()
    for src in [config_lib.CONFIG_DIR / "base.yaml", *sorted((config_lib.CONFIG_DIR / "trainer").glob("*.yaml"))]:
        (cfg_dir / src.relative_to(config_lib.CONFIG_DIR)).write_text(src.read_text())
    (cfg_dir / "toy" / "tiny.yaml").write_text(
        "trainer:\n  max_steps: 12\n  log_every_n_steps: 1\n  checkpoint_every_n_steps: 4\n  enable_progress_bar: false\n"
        "model:\n  width: 4\n"
    )
    (cfg_dir / "toy" / "stage_a.yaml").write_text("trainer:\n  max_steps: 4\n  enable_progress_bar: false\nmodel:\n  lr: 0.1\n")
    (cfg_dir / "toy" / "stage_b.yaml").write_text("trainer:\n  max_steps: 6\n  enable_progress_bar: false\nmodel:\n  lr: 0.01\n")
    (cfg_dir / "toy" / "pipeline.yaml").write_text("stages: [toy/stage_a, toy/stage_b]\ndata:\n  batch_size: 4\n")
    monkeypatch.setattr(config_lib, "CONFIG_DIR", cfg_dir)
    real_get, real_available = papers.get, papers.available
    monkeypatch.setattr(papers, "get", lambda name: toy_paper.PAPER if name == "toy" else real_get(name))
    monkeypatch.setattr(papers, "available", lambda: sorted({*real_available(), "toy"}))
    return cfg_dir
