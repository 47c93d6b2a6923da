"""Lightning wiring of STRIDE: the activation denoiser and both baselines trained side by side on the
same batches and features, evaluated online (frame by frame) on the held-out split, and reported.

Batches come from `datamodules.stride.StrideDataModule.collate` (keys listed in `model_step`).
"""
from __future__ import annotations

import math
import pathlib
import random
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from lightning_modules.common.metrics import (
    DenseCaptioningTemporalF1,
    FrameActivationF1,
    ProactiveTimeAccuracy,
    TemporalActionF1,
    TemporalGroundingF1,
    TimeDiff,
)
from lightning_modules.stride.config import StrideConfig
from lightning_modules.stride.model import (
    MASK,
    ActivationDenoiser,
    ConvFrameEncoder,
    LiveToken,
    PixelFeatures,
    ThresholdHead,
    cosine_warmup,
    gather_windows,
)
from lightning_modules.stride.streaming import (
    LiveTokenRunner,
    StreamingRunner,
    ThresholdHeadRunner,
    Trigger,
    run_lockstep,
)

METHODS = ("stride", "threshold_head", "live_token")
# Published STRIDE figures (FACTS.md): 2B activation model, Qwen3-VL-8B downstream, ET-Bench F1 (%).
PUBLISHED = {"ET-Bench TVG F1": 62.8, "ET-Bench EPM F1": 10.7, "ET-Bench TAL F1": 24.6, "ET-Bench DVC F1": 36.5,
             "ET-Bench SLC F1": 28.5, "OVO-Bench overall": 59.07, "StreamingBench": 59.29, "latency (ms)": 113.0}
TIME_DIFF_WINDOW_S = 10.0  # LIVE's look-ahead: late answers count at most this, missing ones exactly this


def match_responses(triggers: list[Trigger], spans: list[tuple[float, float]]) -> list[float | None]:
    """For each ground-truth span, the time of the first trigger whose span overlaps it (None if none)."""
    out = []
    for start, end in spans:
        times = [t.time for t in triggers if min(t.end, end) - max(t.start, start) > 0]
        out.append(min(times) if times else None)
    return out


class StrideModule(L.LightningModule):
    def __init__(self, cfg: StrideConfig, response_gap_s: float | None = None):
        super().__init__()
        self.cfg = cfg
        self.response_gap_s = cfg.streaming.close_gap_s if response_gap_s is None else response_gap_s
        self.pixels = PixelFeatures(cfg.pixel_grid) if cfg.features == "pixels" else None
        self.encoder = ConvFrameEncoder(cfg) if cfg.frame_encoder == "conv" else None  # shared by all three
        self.stride = ActivationDenoiser(cfg)
        self.threshold_head = ThresholdHead(cfg)
        self.live_token = LiveToken(cfg)
        self.val_frame = nn.ModuleDict({m: FrameActivationF1() for m in ("stride", "threshold_head")})
        self.test_metrics = nn.ModuleDict({m: nn.ModuleDict({
            "tvg": TemporalGroundingF1(), "tal": TemporalActionF1(), "dvc": DenseCaptioningTemporalF1(),
            "proactive": ProactiveTimeAccuracy(tolerance=2.0), "time_diff": TimeDiff(max_delay=TIME_DIFF_WINDOW_S),
            "frame": FrameActivationF1()}) for m in METHODS})
        self.records: list[dict] = []  # per (video, query) online results of the test split, for the report
        self.results: dict[str, float] = {}

    # ------------------------------------------------------------------ features and the shared step
    def video_features(self, batch: dict) -> Tensor:
        """(B, T, cfg.slot_dim) per-frame vectors of the batch's videos, as all three methods read them:
        the frozen features, through the shared learned encoder when there is one."""
        feats = self.frozen_features(batch)
        return feats if self.encoder is None else self.encoder(feats)

    def frozen_features(self, batch: dict) -> Tensor:
        """(B, T, F) frozen per-frame features of the batch's videos."""
        if "feats" in batch:
            feats = batch["feats"].float()
            if feats.shape[-1] != self.cfg.frame_dim:
                raise ValueError(f"batch feats have width {feats.shape[-1]} but model.feat_dim={self.cfg.frame_dim}")
            if self.pixels is not None:
                raise ValueError("model.features='pixels' needs frames, but the batch holds precomputed feats "
                                 "(set model.features=feats and model.feat_dim, or data.use_feats=false)")
            return feats
        if self.pixels is None:
            raise ValueError("model.features='feats' needs <key>.feats.npy in the shards (data.use_feats=true)")
        with torch.no_grad():
            return self.pixels(batch["frames"])

    def model_step(self, batch: dict) -> dict[str, Tensor]:
        """Losses of the three methods on the batch's windows.

        batch: frames (B, T, H, W, 3) uint8 or feats (B, T, F); win_video, clip_end (N,); win_query_ids (N, L);
        seen, loss_mask (N, W) bool; labels, tokens, live (N, W) long.
        """
        feats = gather_windows(self.video_features(batch), batch["win_video"], batch["clip_end"], self.cfg.window)
        seen, query = batch["seen"], batch["win_query_ids"]
        stride_logits = self.stride(feats, seen, query, batch["tokens"])
        head_logits = self.threshold_head(feats, seen, query)
        live_logits = self.live_token(feats, seen, query)
        out = {
            "stride_loss": ActivationDenoiser.loss(stride_logits, batch["labels"], batch["loss_mask"]),
            "threshold_head_loss": ThresholdHead.loss(head_logits, batch["labels"], seen),
            "live_token_loss": LiveToken.loss(live_logits, batch["live"]),
            "feats": feats, "head_logits": head_logits,
        }
        out["loss"] = out["stride_loss"] + out["threshold_head_loss"] + out["live_token_loss"]
        return out

    def _log_losses(self, stage: str, out: dict, batch_size: int) -> None:
        for name in ("loss", "stride_loss", "threshold_head_loss", "live_token_loss"):
            self.log(f"{stage}/{name}", out[name], batch_size=batch_size, prog_bar=name == "loss",
                     sync_dist=stage != "train")

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        out = self.model_step(batch)
        self._log_losses("train", out, len(batch["clip_end"]))
        return out["loss"]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        out = self.model_step(batch)
        self._log_losses("val", out, len(batch["clip_end"]))
        seen = batch["seen"]
        all_masked = torch.where(seen, torch.full_like(batch["tokens"], MASK), torch.zeros_like(batch["tokens"]))
        labels, _, _ = self.stride.denoise(out["feats"], seen, batch["win_query_ids"], all_masked,
                                           self.cfg.streaming.steps, self.cfg.streaming.threshold,
                                           self.cfg.streaming.active_threshold)
        self.val_frame["stride"].update(labels, batch["labels"], seen)
        self.val_frame["threshold_head"].update(torch.sigmoid(out["head_logits"]) >= self.cfg.head_threshold,
                                                batch["labels"], seen)

    def on_validation_epoch_end(self) -> None:
        for method, metric in self.val_frame.items():
            if metric.total > 0:
                prefix = "" if method == "stride" else f"{method}."
                self.log(f"val/{prefix}frame_f1", metric.compute()["f1"].float(), sync_dist=False)
            metric.reset()

    # ------------------------------------------------------------------ online evaluation
    def runners(self, query: str, query_ids: Tensor, responder=None) -> dict[str, Any]:
        """Fresh online runners of the three methods for one query stream."""
        s, dim = self.cfg.streaming, self.cfg.slot_dim
        return {
            "stride": StreamingRunner(self.stride, s, query, query_ids, dim, responder=responder),
            "threshold_head": ThresholdHeadRunner(self.threshold_head, self.cfg.head_streaming, self.cfg.head_threshold,
                                                  query, query_ids, dim, responder=responder),
            "live_token": LiveTokenRunner(self.live_token, s, self.cfg.live_threshold, query, query_ids, dim,
                                          responder=responder),
        }

    def test_step(self, batch: dict, batch_idx: int) -> None:
        if len(batch["clip_end"]):
            self._log_losses("test", self.model_step(batch), len(batch["clip_end"]))
        feats = self.video_features(batch)
        records, streams, runners = [], [], {m: [] for m in METHODS}
        for b, video in enumerate(batch["videos"]):
            for q, (query, spans) in enumerate(zip(video["queries"], video["spans"])):
                records.append({"key": video["key"], "query": query, "spans": spans,
                                "num_frames": video["num_frames"], "labels": video["slot_labels"][q]})
                streams.append(feats[b, : video["num_frames"]])
                for method, runner in self.runners(query, video["query_ids"][q]).items():
                    runners[method].append(runner)
        for method in METHODS:  # every stream of the batch advances frame by frame, model calls batched
            run_lockstep(runners[method], streams)
            for record, runner in zip(records, runners[method]):
                record[method] = {"triggers": runner.triggers, "p_active": runner.p_active}
                self._update_test_metrics(method, runner.triggers, record["spans"], runner.p_active,
                                          record["labels"])
        self.records.extend(records)

    def _update_test_metrics(self, method: str, triggers: list[Trigger], spans, p_active, slot_labels) -> None:
        metrics = self.test_metrics[method]
        predicted = [(t.start, t.end) for t in triggers]
        binary = torch.zeros(len(slot_labels), dtype=torch.long)
        for start, end in predicted:  # the spans it spoke about, as slots
            binary[max(0, int(math.floor(start))):max(0, int(math.ceil(end)))] = 1
        metrics["frame"].update(binary, slot_labels)
        if not spans:
            return  # a query that never happens: only the frame-level false alarms count
        metrics["tvg"].update([predicted], [spans])
        metrics["tal"].update([predicted], [spans])
        metrics["dvc"].update([predicted], [spans])
        responses = match_responses(triggers, spans)
        references = [end + self.response_gap_s for _, end in spans]
        metrics["proactive"].update(responses, references)
        metrics["time_diff"].update([responses], [references])

    def on_test_epoch_start(self) -> None:
        self.records, self.results = [], {}

    def on_test_epoch_end(self) -> None:
        results = {}
        for method, metrics in self.test_metrics.items():
            prefix = "" if method == "stride" else f"{method}."
            if metrics["tvg"].total == 0:
                raise ValueError("test split has no streaming query with spans: nothing to score")
            tvg, tal, dvc = metrics["tvg"].compute(), metrics["tal"].compute(), metrics["dvc"].compute()
            values = {"tvg_f1": tvg["f1"], "tvg_miou": tvg["miou"], **{f"tvg_{k}": v for k, v in tvg.items()
                                                                      if k.startswith("f1@")},
                      "tal_f1": tal["f1"], "dvc_f1": dvc["f1"], "proactive_acc": metrics["proactive"].compute(),
                      "time_diff": metrics["time_diff"].compute(), "frame_f1": metrics["frame"].compute()["f1"]}
            triggers = [len(r[method]["triggers"]) for r in self.records]
            values["triggers_per_query"] = torch.tensor(sum(triggers) / max(1, len(triggers)))
            for name, value in values.items():
                results[f"{prefix}{name}"] = float(value)
                self.log(f"test/{prefix}{name}", float(value), sync_dist=False)
            for metric in metrics.values():
                metric.reset()
        self.results = results

    # ------------------------------------------------------------------ report
    def report(self, fig_dir: pathlib.Path) -> tuple[dict[str, float], str]:
        """Metrics of STRIDE and both baselines side by side, published figures, and timeline plots."""
        if not self.results:
            raise ValueError("StrideModule.report: run trainer.test first (no online results yet)")
        fig_dir = pathlib.Path(fig_dir)
        fig_dir.mkdir(parents=True, exist_ok=True)
        rows = [("tvg_f1", "TVG F1 (ET-Bench, first span) ↑"), ("tvg_miou", "TVG mIoU ↑"),
                ("tal_f1", "TAL F1 ↑"), ("dvc_f1", "DVC temporal F1 ↑"), ("time_diff", "TimeDiff (s) ↓"),
                ("proactive_acc", "proactive acc. (±2 s) ↑"), ("frame_f1", "frame F1 ↑"),
                ("triggers_per_query", "triggers / query")]
        lines = ["## STRIDE: when to speak, online on the held-out split", "",
                 f"{len(self.records)} (video, query) streams, fed one frame at a time; window W="
                 f"{self.cfg.window}, stride {self.cfg.streaming.stride}, K={self.cfg.streaming.steps}, "
                 f"threshold {self.cfg.streaming.threshold}, stable_runs {self.cfg.streaming.stable_runs}. "
                 f"TimeDiff reference: span end + {self.response_gap_s:g} s (a missing answer counts "
                 f"{TIME_DIFF_WINDOW_S:g} s).", "",
                 f"Decision parameters (tuned on the val split, `lightning_modules/stride/tuning.py`): STRIDE "
                 f"active_threshold {self.cfg.streaming.active_threshold}; threshold head head_threshold "
                 f"{self.cfg.head_threshold}; close_run / min_span STRIDE {self.cfg.streaming.close_run} / "
                 f"{self.cfg.streaming.min_span}, threshold head {self.cfg.head_streaming.close_run} / "
                 f"{self.cfg.head_streaming.min_span}; LIVE live_threshold {self.cfg.live_threshold}.", "",
                 "| metric | STRIDE | threshold head | LIVE token |", "|---|---|---|---|"]
        for key, label in rows:
            vals = [self.results[key], self.results[f"threshold_head.{key}"], self.results[f"live_token.{key}"]]
            lines.append(f"| {label} | " + " | ".join(f"{v:.3f}" for v in vals) + " |")
        lines += ["", "Published STRIDE (2B activation model, Qwen3-VL-8B downstream; real benchmarks, not this "
                  "world): " + ", ".join(f"{k} {v:g}" for k, v in PUBLISHED.items()) + ".", ""]
        chosen = random.Random(0).sample(self.records, min(self.cfg.timeline_videos, len(self.records)))
        for i, record in enumerate(chosen):
            name = f"stride_timeline_{i}.png"
            plot_timeline(record, fig_dir / name)
            lines.append(f"![{record['key']}: {record['query']}]({name})")
        return dict(self.results), "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ optimizer
    def configure_optimizers(self):
        decay = [p for n, p in self.named_parameters() if p.dim() >= 2 and "position" not in n]
        other = [p for n, p in self.named_parameters() if p.dim() < 2 or "position" in n]
        optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": self.cfg.weight_decay},
                                       {"params": other, "weight_decay": 0.0}], lr=self.cfg.lr)
        total = max(1, int(self.trainer.estimated_stepping_batches)) if self.trainer else 1000
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: cosine_warmup(step, self.cfg.warmup_steps, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


def plot_timeline(record: dict, path: pathlib.Path) -> None:
    """Ground-truth spans, per-slot activation probability and triggers of each method for one stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(METHODS), 1, figsize=(10, 1.6 * len(METHODS)), sharex=True)
    t = torch.arange(record["num_frames"]) + 0.5
    for ax, method in zip(axes, METHODS):
        for start, end in record["spans"]:
            ax.axvspan(start, end, color="tab:green", alpha=0.25, lw=0)
        ax.plot(t, record[method]["p_active"], color="tab:blue", lw=1,
                label="p(respond)" if method == "live_token" else "p(active)")
        for trig in record[method]["triggers"]:
            ax.hlines(1.08, trig.start, trig.end, color="tab:red", lw=3)
            ax.axvline(trig.time, color="tab:red", ls="--", lw=1)
        ax.set_ylim(-0.05, 1.15)
        ax.set_ylabel(method.replace("_", " "), fontsize=8)
    axes[0].set_title(f"{record['key']}: {record['query']}  (green: truth, red: triggered span, dashed: trigger time)",
                      fontsize=9)
    axes[-1].set_xlabel("seconds")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
