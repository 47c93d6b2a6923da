"""Decision parameters of STRIDE and both baselines, tuned on the validation split only.

Every method gets a grid over its decision knobs and the same selection rule; the baselines get at least
as many settings as STRIDE. The test split is never read here. Default grids (`GRIDS`):

- STRIDE (24):          streaming.active_threshold x streaming.close_run x streaming.stable_runs x
                        streaming.confirm_stable (K, the confidence threshold and min_span stay as committed)
- threshold head (45):  model.head_threshold x close_run x min_span (as model.head_close_run / head_min_span)
- LIVE token (30):      model.live_threshold (LIVE's spans come from its own started/over tokens, so the
                        span rules do not apply; its one knob gets a fine grid)

A setting is scored by `utility` = TVG F1 + (1 - TimeDiff / 10 s): the issue's two targets on one scale.

The threshold head and LIVE score each frame once, whatever the decision rule, so their outputs are
recorded in one pass and the rules replayed on them; STRIDE's runs depend on its own earlier labels, so
each of its settings is a full online pass.

    python -m lightning_modules.stride.tuning --run runs/stride-B [--out runs/stride-B/tuning.md]

(`--run`: a run folder of `experiments.run fit`, holding config.yaml and checkpoints/last.ckpt.)
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lightning_modules.stride.streaming import LiveTokenRunner, StreamingRunner, ThresholdHeadRunner, run_lockstep

GRIDS = {
    # STRIDE, 24 settings: its decision threshold and span rule, and its own refinement rule
    "stride": {"active_threshold": [0.3, 0.4], "close_run": [1, 2], "stable_runs": [1, 2, 3],
               "confirm_stable": [False, True]},
    # threshold head, 45 settings (more than STRIDE's): its decision threshold and the shared span rules
    "threshold_head": {"head_threshold": [0.2, 0.3, 0.35, 0.4, 0.5], "close_run": [1, 2, 3], "min_span": [1, 2, 3]},
    # LIVE, 30 settings: its one knob
    "live_token": {"live_threshold": [0.5, 0.55, 0.6, 0.65, 0.7, 0.725, 0.75, 0.775, 0.8, 0.825, 0.85, 0.86, 0.87,
                                      0.875, 0.88, 0.89, 0.9, 0.91, 0.92, 0.925, 0.93, 0.94, 0.95, 0.955, 0.96, 0.965,
                                      0.97, 0.975, 0.98, 0.99]},
}
MODEL_KNOBS = ("head_threshold", "live_threshold")  # the rest are fields of StreamingConfig


@dataclass
class Stream:
    """One (video, query) stream of the split: frame vectors (T, D) as the methods read them, and truth."""

    feats: Tensor
    query: str
    query_ids: Tensor
    spans: list
    slot_labels: Tensor


def utility(metrics: dict[str, float], time_diff_window: float = 10.0) -> float:
    """TVG F1 + (1 - TimeDiff / window): higher is better; both terms lie in [0, 1]."""
    return metrics["tvg_f1"] + 1.0 - metrics["time_diff"] / time_diff_window


@torch.inference_mode()
def streams_of(module, batches) -> list[Stream]:
    """Every (video, query) stream of the batches (from StrideDataModule.collate), encoded once."""
    out = []
    for batch in batches:
        feats = module.video_features(batch)
        for b, video in enumerate(batch["videos"]):
            for q, (query, spans) in enumerate(zip(video["queries"], video["spans"])):
                out.append(Stream(feats[b, : video["num_frames"]].clone(), query, video["query_ids"][q], spans,
                                  video["slot_labels"][q]))
    return out


@torch.inference_mode()
def causal_outputs(runner_cls, model, cfg, streams: list[Stream]) -> list[list[tuple[Tensor, ...]]]:
    """Per stream and frame, the causal model's output for the newest frame (what `apply` receives)."""

    class Recorder(runner_cls):
        def apply(self, *outputs: Tensor) -> list:
            self.recorded.append(tuple(o.clone() for o in outputs))
            return []

    runners = []
    for s in streams:
        runner = Recorder(model, cfg, 0.5, s.query, s.query_ids, s.feats.shape[-1])
        runner.recorded = []
        runners.append(runner)
    run_lockstep(runners, [s.feats for s in streams])
    return [r.recorded for r in runners]


def replay(runner_cls, cfg, threshold: float, streams: list[Stream], recorded) -> list:
    """The causal runners of a decision rule on recorded outputs: equal to running the model again."""
    runners = []
    for s, outputs in zip(streams, recorded):
        runner = runner_cls(None, cfg, threshold, s.query, s.query_ids, s.feats.shape[-1])
        for n in range(len(s.feats)):
            runner.advance(s.feats[n])
            if not runner.done:
                runner.apply(*outputs[n])
        runners.append(runner)
    return runners


def score(module, method: str, streams: list[Stream], runners) -> dict[str, float]:
    """The test metrics of `module` for one method's finished runners (metrics are reset afterwards)."""
    for s, runner in zip(streams, runners):
        module._update_test_metrics(method, runner.triggers, s.spans, runner.p_active, s.slot_labels)
    metrics = module.test_metrics[method]
    out = {"tvg_f1": float(metrics["tvg"].compute()["f1"]), "time_diff": float(metrics["time_diff"].compute()),
           "tal_f1": float(metrics["tal"].compute()["f1"]), "frame_f1": float(metrics["frame"].compute()["f1"]),
           "triggers_per_query": sum(len(r.triggers) for r in runners) / max(1, len(runners))}
    for metric in metrics.values():
        metric.reset()
    out["utility"] = utility(out)
    return out


def settings(grid: dict[str, list]) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


def sweep(module, streams: list[Stream], grids: dict[str, dict[str, list]] = GRIDS, log=print) -> list[dict]:
    """Score every setting of every method's grid; rows {method, setting, metrics}."""
    base, rows = module.cfg.streaming, []
    fields = {f.name for f in dataclasses.fields(base)}
    recorded = {}
    for method, grid in grids.items():
        for setting in settings(grid):
            unknown = set(setting) - fields - set(MODEL_KNOBS)
            if unknown:
                raise ValueError(f"tuning grid of {method}: unknown knobs {sorted(unknown)}")
            began = time.perf_counter()
            cfg = dataclasses.replace(base, **{k: v for k, v in setting.items() if k in fields})
            if method == "stride":
                runners = [StreamingRunner(module.stride, cfg, s.query, s.query_ids, s.feats.shape[-1])
                           for s in streams]
                with torch.inference_mode():
                    run_lockstep(runners, [s.feats for s in streams])
            else:
                runner_cls, model, knob = ((ThresholdHeadRunner, module.threshold_head, "head_threshold")
                                           if method == "threshold_head"
                                           else (LiveTokenRunner, module.live_token, "live_threshold"))
                if method not in recorded:
                    recorded[method] = causal_outputs(runner_cls, model, base, streams)
                threshold = setting.get(knob, getattr(module.cfg, knob))
                runners = replay(runner_cls, cfg, threshold, streams, recorded[method])
            rows.append({"method": method, "setting": setting, "metrics": score(module, method, streams, runners)})
            log(f"{method} {setting} " + " ".join(f"{k} {v:.3f}" for k, v in rows[-1]["metrics"].items())
                + f" ({time.perf_counter() - began:.0f} s)")
    return rows


def best(rows: list[dict]) -> dict[str, dict]:
    """Per method, the row of highest utility (the first one on ties: grids list the defaults' side first)."""
    out = {}
    for row in rows:
        current = out.get(row["method"])
        if current is None or row["metrics"]["utility"] > current["metrics"]["utility"]:
            out[row["method"]] = row
    return out


def markdown(rows: list[dict], split: str) -> str:
    lines = [f"# Decision parameters tuned on the {split} split", "",
             "| method | setting | TVG F1 | TimeDiff (s) | TAL F1 | frame F1 | triggers/query | utility |",
             "|---|---|---|---|---|---|---|---|"]
    chosen = {id(r) for r in best(rows).values()}
    for r in rows:
        m = r["metrics"]
        mark = " **(chosen)**" if id(r) in chosen else ""
        lines.append(f"| {r['method']} | {r['setting']}{mark} | {m['tvg_f1']:.3f} | {m['time_diff']:.2f} | "
                     f"{m['tal_f1']:.3f} | {m['frame_f1']:.3f} | {m['triggers_per_query']:.2f} | {m['utility']:.3f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    from omegaconf import OmegaConf

    from datamodules.stride import StrideDataConfig, StrideDataModule
    from lightning_modules.stride.config import StrideConfig
    from lightning_modules.stride.module import StrideModule

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="run folder with config.yaml and checkpoints/last.ckpt")
    parser.add_argument("--ckpt", help="checkpoint (default: RUN/checkpoints/last.ckpt)")
    parser.add_argument("--out", help="markdown table of every setting (default: RUN/tuning.md)")
    args = parser.parse_args(argv)
    run = Path(args.run)
    if not (run / "config.yaml").is_file():
        raise FileNotFoundError(f"--run {run}: no config.yaml (the folder of an `experiments.run fit`)")
    cfg = OmegaConf.to_container(OmegaConf.load(run / "config.yaml"), resolve=True)
    data_cfg = StrideDataConfig(**{**cfg["data"], "num_workers": 0})
    module = StrideModule(StrideConfig(**cfg["model"]), response_gap_s=data_cfg.response_gap_s)
    ckpt = Path(args.ckpt or run / "checkpoints" / "last.ckpt")
    module.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"])
    module.eval()
    data = StrideDataModule(data_cfg)
    data.setup("validate")
    streams = streams_of(module, data.val_dataloader())
    print(f"{len(streams)} val streams from {ckpt}", flush=True)
    rows = sweep(module, streams, GRIDS, log=lambda line: print(line, flush=True))
    out = Path(args.out or run / "tuning.md")
    out.write_text(markdown(rows, "val"))
    for method, row in best(rows).items():
        print(f"chosen {method}: {row['setting']} {row['metrics']}")
    print(f"table written to {out}")


if __name__ == "__main__":
    main()
