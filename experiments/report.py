"""Run directory -> OUT/report/{report.md, metrics.json, *.png}, and a leaderboard over many runs.

    python -m experiments.report OUT            # rebuild one run's report
    python -m experiments.report --leaderboard DIR   # a table of every report under DIR

Inputs, all written by experiments/run.py: OUT/config.yaml, OUT/eval/metrics.json (the test split's
torchmetrics plus the paper's baselines), OUT/eval/section.md (the paper's own tables and plots),
and the CSV logs of the run (OUT/logs/fit*/metrics.csv and, for a pipeline, each stage's).
A metric key names the metric; a baseline's key is prefixed by the baseline (`chance.qa_accuracy`).
"""
from __future__ import annotations

import argparse
import csv
import json
from collections import defaultdict
from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402


def build_report(out: Path) -> Path:
    out = Path(out)
    metrics_file = out / "eval" / "metrics.json"
    if not metrics_file.exists():
        raise FileNotFoundError(f"{metrics_file} is missing: run `test` (or `fit`) with --out {out} first")
    metrics = json.loads(metrics_file.read_text())
    section_file = out / "eval" / "section.md"
    section = section_file.read_text() if section_file.exists() else ""
    cfg = OmegaConf.load(out / "config.yaml") if (out / "config.yaml").exists() else OmegaConf.create({})

    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    (report_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    curves = _plot_losses(out, report_dir / "loss_curves.png")

    lines = [f"# {cfg.get('exp', out.name)} — evaluation report", ""]
    lines += [f"Run directory: `{out}`", ""]
    lines += ["## Metrics (test split)", "", *_metrics_table(metrics), ""]
    if section.strip():
        lines += [section.strip(), ""]
    if curves:
        lines += ["## Training curves", "", "![loss curves](loss_curves.png)", ""]
    lines += ["## Data", "", *_data_lines(cfg), ""]
    lines += ["## Config", "", "```yaml", OmegaConf.to_yaml(cfg).rstrip(), "```", ""]
    path = report_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def _metrics_table(metrics: dict) -> list[str]:
    """One row per metric: ours, then every baseline that reports the same metric."""
    ours = {k: v for k, v in metrics.items() if "." not in k.split("@")[0]}
    baselines = defaultdict(dict)
    for key, value in metrics.items():
        head, _, metric = key.partition(".")
        if metric and "." not in head and key not in ours:
            baselines[head][metric] = value
    names = sorted(baselines)
    rows = ["| metric | ours | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for metric in sorted(set(ours) | {m for b in baselines.values() for m in b}):
        cells = [_fmt(ours.get(metric))] + [_fmt(baselines[n].get(metric)) for n in names]
        rows.append(f"| {metric} | " + " | ".join(cells) + " |")
    return rows


def _fmt(value: Optional[float]) -> str:
    return "" if value is None else f"{value:.4g}"


def _read_csv_logs(out: Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """{run label: {column: [(step, value)]}} for the run's own log and each pipeline stage's."""
    logs = {}
    runs = [("", out)] + [(stage.name, stage) for stage in sorted((out / "stages").glob("*"))]
    for label, run_dir in runs:
        # a resumed fit logs into fit-2, fit-3, ...: read them in order of creation
        files = sorted(run_dir.glob("logs/fit*/metrics.csv"), key=lambda p: p.stat().st_mtime)
        series = defaultdict(list)
        for path in files:
            with path.open() as f:
                for row in csv.DictReader(f):
                    step = int(float(row.get("step") or 0))
                    for key, value in row.items():
                        if key not in ("step", "epoch") and value not in ("", None):
                            series[key].append((step, float(value)))
        if series:
            logs[label] = dict(series)
    return logs


def _plot_losses(out: Path, path: Path) -> bool:
    logs = _read_csv_logs(out)
    loss_keys = sorted({k for series in logs.values() for k in series if "loss" in k and not k.startswith("test/")})
    if not loss_keys:
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    offset = 0  # pipeline stages are drawn one after another on a shared step axis
    for label, series in logs.items():
        last_step = 0
        for key in loss_keys:
            points = series.get(key)
            if points:
                steps, values = zip(*points)
                ax.plot([offset + s for s in steps], values, label=f"{label} {key}".strip(), marker="." if len(points) < 20 else None)
                last_step = max(last_step, max(steps))
        offset += last_step
    ax.set_xlabel("training step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _data_lines(cfg) -> list[str]:
    root = OmegaConf.select(cfg, "data.root")
    if not root:
        return ["(no data root in the config)"]
    lines = [f"Shards under `{root}`."]
    world = Path(root) / "world.json"
    if world.exists():
        info = json.loads(world.read_text())
        lines += ["", "```json", json.dumps(info, indent=1)[:3000], "```"]
    return lines


def leaderboard(root: Path) -> str:
    """A markdown table of every OUT/report/metrics.json under `root`, one row per run."""
    runs = sorted(Path(root).glob("**/report/metrics.json"))
    if not runs:
        raise FileNotFoundError(f"no report/metrics.json under {root}")
    table = {p.parents[1].relative_to(root).as_posix() or ".": json.loads(p.read_text()) for p in runs}
    keys = sorted({k for m in table.values() for k in m})
    lines = ["| run | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for run, m in table.items():
        lines.append(f"| {run} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("out", help="a run directory, or with --leaderboard a folder of runs")
    parser.add_argument("--leaderboard", action="store_true", help="tabulate every report under OUT")
    args = parser.parse_args(argv)
    if args.leaderboard:
        table = leaderboard(Path(args.out))
        (Path(args.out) / "leaderboard.md").write_text(table)
        print(table)
    else:
        print(f"report written to {build_report(Path(args.out))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
