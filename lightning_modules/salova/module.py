"""Lightning wiring of SALOVA: one `model_step` for every stage, metric objects per stage, the report.

Loss: L = L_lm + router_weight * (BCE + margin_weight * margin ranking)   (FACTS.md, "SALOVA"); a router
pre-stage (model.router_only) trains without L_lm and without running the LLM.
Evaluation: segment retrieval Recall@1/@5/@k, mAP, hit@k (the answer segment among the k the LLM reads) and
multiple-choice QA accuracy by option likelihood; the test stage also runs the k sweep and FocusFast ablations
on the trained model and keeps a few examples for the report. Baselines: random segment ranking, QA chance.
"""
from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric
from torchmetrics.functional.retrieval import retrieval_average_precision, retrieval_hit_rate, retrieval_recall
from torchmetrics.retrieval import RetrievalHitRate, RetrievalMAP, RetrievalRecall

from .config import SalovaConfig
from .model import SalovaModel, SalovaOutput, ground_truth_segments, select_top_k

STAGES = ("train", "val", "test")
# FACTS.md, "SALOVA": published numbers, shown beside ours in the report.
PAPER_NUMBERS = {
    "Video-MME avg (Llama-3.2-3B / Phi-3.5 / Qwen2.5-7B)": "45.3 / 46.7 / 50.0",
    "LongVideoBench val": "41.4 / 41.6 / 43.5",
    "Video-MME without FocusFast (Llama-3.2-3B)": "45.3 -> 36.9",
    "best k in the paper's sweep": "9",
}


class RetrievalMetrics(nn.Module):
    """Recall@1, Recall@5, Recall@k, mAP and hit@k over (query, segment) scores; padded segments left out."""

    def __init__(self, k: int):
        super().__init__()
        self.k = k
        self.metrics = nn.ModuleDict({
            "recall@1": RetrievalRecall(top_k=1), "recall@5": RetrievalRecall(top_k=5),
            "recall@k": RetrievalRecall(top_k=k), "map": RetrievalMAP(), "hit@k": RetrievalHitRate(top_k=k),
        })
        self.seen = 0  # queries so far: makes query indexes unique across batches

    def update(self, scores: Tensor, labels: Tensor, mask: Tensor) -> None:
        index = torch.arange(self.seen, self.seen + scores.shape[0], device=scores.device)[:, None].expand_as(scores)
        self.seen += scores.shape[0]
        for metric in self.metrics.values():
            metric.update(scores[mask].float(), labels[mask] > 0.5, indexes=index[mask])

    def items(self):
        return self.metrics.items()


class SalovaModule(L.LightningModule):
    def __init__(self, cfg: SalovaConfig, vocab_size: int):
        super().__init__()
        self.cfg = cfg
        self.model = SalovaModel(cfg, vocab_size)
        self._freeze()
        k = cfg.router.top_k
        self.retrieval = nn.ModuleDict({s: RetrievalMetrics(k) for s in ("val", "test")})
        self.random_retrieval = nn.ModuleDict({s: RetrievalMetrics(k) for s in ("val", "test")})
        self.qa_accuracy = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self.chance = nn.ModuleDict({s: MeanMetric() for s in ("val", "test")})
        self._test_records: list[dict] = []

    def _freeze(self) -> None:
        parts = {"vision": self.model.vision, "connector": self.model.connector, "router": self.model.router,
                 "text": self.model.text, "llm": self.model.llm}
        for name, part in parts.items():
            if name not in self.cfg.trainable:
                part.requires_grad_(False)

    # ----------------------------------------------------------------- steps
    def losses(self, batch: dict, stage: str) -> tuple[dict[str, Tensor], SalovaOutput]:
        """Forward + losses: {"loss", "lm_loss", "router_bce", "router_margin"}. Training may teacher-force or
        (router_only) skip the LLM; evaluation always runs it on the router's top-k."""
        train = stage == "train"
        out = self.model(batch, teacher_forcing=None if train else False,
                         use_llm=not (train and self.cfg.router_only))
        bce, margin = self.model.router_loss(batch, out.router)
        loss = out.lm_loss + self.cfg.router_weight * (bce + self.cfg.margin_weight * margin)
        return {"loss": loss, "lm_loss": out.lm_loss, "router_bce": bce, "router_margin": margin}, out

    def model_step(self, batch: dict, stage: str):
        """`losses` + their logs -> (loss, SalovaOutput)."""
        parts, out = self.losses(batch, stage)
        loss = parts["loss"]
        batch_size = len(batch["meta"]["keys"])
        for name, value in parts.items():
            self.log(f"{stage}/{name}", value, batch_size=batch_size, prog_bar=name == "loss",
                     on_step=stage == "train", on_epoch=stage != "train")
        return loss, out

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        return self.model_step(batch, "train")[0]

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def _evaluate(self, batch: dict, stage: str) -> None:
        _, out = self.model_step(batch, stage)
        batch_size = len(batch["meta"]["keys"])
        router, labels = out.router, batch["labels"]
        self.retrieval[stage].update(router.scores, labels, router.mask)
        generator = torch.Generator().manual_seed(self.random_retrieval[stage].seen)
        random_scores = torch.rand(router.scores.shape, generator=generator).to(router.scores.device)
        self.random_retrieval[stage].update(random_scores, labels, router.mask)
        for name, metric in self.retrieval[stage].items():
            self.log(f"{stage}/{name}", metric, batch_size=batch_size)

        has_options = batch["answer_index"] >= 0
        if has_options.any():
            segment_tokens, _ = self.model.encode_segments(batch)
            chosen, valid = select_top_k(router.scores, router.mask, self.cfg.router.top_k)
            option_scores = self.model.option_scores(batch, segment_tokens, chosen, valid, self.cfg.focusfast,
                                                     self.model.relevance(router))
            correct = (option_scores.argmax(1) == batch["answer_index"]).float()[has_options]
            self.qa_accuracy[stage].update(correct)
            n_options = batch["options_mask"].any(-1).sum(1).float()[has_options]
            self.chance[stage].update(1.0 / n_options)
            self.log(f"{stage}/qa_accuracy", self.qa_accuracy[stage], batch_size=int(has_options.sum()))
            if stage == "test":
                self._record_test(batch, router, segment_tokens, option_scores, chosen, valid)
        elif stage == "test":
            self._record_test(batch, router, None, None, None, None)

    @torch.no_grad()
    def predict_step(self, batch: dict, batch_idx: int) -> list[dict]:
        """Per query: the router's scores, its top-k (time order) and, for multiple choice, the chosen option."""
        segment_tokens, segment_cls = self.model.encode_segments(batch)
        router = self.model.route(batch, segment_cls)
        chosen, valid = select_top_k(router.scores, router.mask, self.cfg.router.top_k)
        option_scores = self.model.option_scores(batch, segment_tokens, chosen, valid, self.cfg.focusfast,
                                                 self.model.relevance(router))
        rows = []
        for q, meta in enumerate(batch["meta"]["queries"]):
            b = int(batch["query_video"][q])
            s = int(router.mask[q].sum())
            row = {"key": batch["meta"]["keys"][b], "kind": meta["kind"], "query": meta["text"],
                   "segment_times": batch["meta"]["segment_times"][b], "scores": router.scores[q, :s].tolist(),
                   "top_k": chosen[q][valid[q]].tolist(), "relevant": meta["segments"]}
            if meta["answer_index"] >= 0:
                row["predicted"] = meta["options"][int(option_scores[q].argmax())]
                row["answer"] = meta["answer"]
            rows.append(row)
        return rows

    def on_validation_epoch_end(self) -> None:
        self._log_baselines("val")

    def on_test_epoch_end(self) -> None:
        self._log_baselines("test")

    def _log_baselines(self, stage: str) -> None:
        # Logged by hand (not as metric objects) so that the `random_retrieval.` / `chance.` names stay flat.
        if self.random_retrieval[stage].seen:
            for name, metric in self.random_retrieval[stage].items():
                self.log(f"{stage}/random_retrieval.{name}", metric.compute())
                metric.reset()
            self.random_retrieval[stage].seen = 0
        if self.chance[stage].update_called:
            self.log(f"{stage}/chance.qa_accuracy", self.chance[stage].compute())
            self.chance[stage].reset()
        self.retrieval[stage].seen = 0

    # ----------------------------------------------------------------- test records, ablations
    def on_test_epoch_start(self) -> None:
        self._test_records = []

    @torch.no_grad()
    def _record_test(self, batch, router, segment_tokens, option_scores, chosen, valid) -> None:
        """Keep what the report needs per query: scores, labels and QA answers under each ablation."""
        q = router.scores.shape[0]
        variants: dict[str, Tensor] = {}
        relevance = self.model.relevance(router)
        if option_scores is not None:
            variants["full"] = option_scores.argmax(1)
            for k in self.cfg.eval_k:
                c, v = select_top_k(router.scores, router.mask, k)
                variants[f"k{k}"] = self.model.option_scores(batch, segment_tokens, c, v, True, relevance).argmax(1)
            variants["no_focusfast"] = self.model.option_scores(batch, segment_tokens, chosen, valid,
                                                                False, relevance).argmax(1)
            none = torch.zeros_like(valid)
            variants["global_only"] = self.model.option_scores(batch, segment_tokens, chosen, none, True).argmax(1)
            variants["no_video"] = self.model.option_scores(batch, segment_tokens, chosen, none, False).argmax(1)
            c, v = ground_truth_segments(batch["labels"], router.mask, self.cfg.router.top_k, router.scores)
            variants["oracle_segments"] = self.model.option_scores(batch, segment_tokens, c, v,
                                                                   self.cfg.focusfast, relevance).argmax(1)
        for i in range(q):
            meta = batch["meta"]["queries"][i]
            b = int(batch["query_video"][i])
            s = int(router.mask[i].sum())
            record = {
                "key": batch["meta"]["keys"][b], "kind": meta["kind"], "text": meta["text"],
                "answer": meta["answer"], "options": meta["options"], "answer_index": meta["answer_index"],
                "scores": router.scores[i, :s].float().cpu(), "labels": batch["labels"][i, :s].cpu(),
                "segment_times": batch["meta"]["segment_times"][b],
                "predictions": {name: int(pred[i]) for name, pred in variants.items()},
            }
            self._test_records.append(record)

    def report(self, fig_dir: Path) -> tuple[dict[str, float], str]:
        """Ablations and baselines over the test records -> (flat metrics, markdown section with figures)."""
        records = self._test_records
        if not records:
            return {}, "No test queries were seen.\n"
        top_k = self.cfg.router.top_k
        ks = sorted(set(self.cfg.eval_k) | {1, 5, top_k})
        metrics: dict[str, float] = {}
        for k in ks:  # ours and the expected value of a random ranking, per query, averaged
            metrics[f"sweep.recall@{k}"] = _mean(float(retrieval_recall(r["scores"], r["labels"] > 0.5, top_k=k))
                                                 for r in records)
            metrics[f"sweep.hit@{k}"] = _mean(float(retrieval_hit_rate(r["scores"], r["labels"] > 0.5, top_k=k))
                                              for r in records)
            metrics[f"random_retrieval.expected_recall@{k}"] = _mean(min(k, len(r["scores"])) / len(r["scores"])
                                                                     for r in records)
            metrics[f"random_retrieval.expected_hit@{k}"] = _mean(_random_hit(r["labels"], k) for r in records)
        metrics["sweep.map"] = _mean(float(retrieval_average_precision(r["scores"], r["labels"] > 0.5))
                                     for r in records)
        generator = torch.Generator().manual_seed(0)
        metrics["random_retrieval.expected_map"] = _mean(
            _mean(float(retrieval_average_precision(torch.rand(len(r["scores"]), generator=generator),
                                                    r["labels"] > 0.5)) for _ in range(100)) for r in records)
        by_video: dict[str, list[float]] = {}
        for r in records:
            by_video.setdefault(r["key"], []).append(float(retrieval_hit_rate(r["scores"], r["labels"] > 0.5,
                                                                              top_k=top_k)))
        metrics["videos_with_answer_in_top_k"] = _mean(float(_mean(v) > 0.5) for v in by_video.values())

        qa = [r for r in records if r["answer_index"] >= 0]
        variants = list(qa[0]["predictions"]) if qa else []
        for name in variants:
            metrics[f"ablation.{name}.qa_accuracy"] = _mean(float(r["predictions"][name] == r["answer_index"])
                                                            for r in qa)
        if qa:
            metrics["chance.qa_accuracy"] = _mean(1.0 / len(r["options"]) for r in qa)
            prior = self._world_chance(self._test_split()).get("prior.qa_accuracy")
            if prior is not None:
                metrics["text_prior.qa_accuracy"] = float(prior)

        kinds = sorted({r["kind"] for r in records})
        lines = [f"## SALOVA: segment retrieval and QA on the held-out split ({self._test_split()})", "",
                 f"{len(records)} test queries ({', '.join(kinds)}; {len(qa)} multiple choice) over {len(by_video)} "
                 f"videos with {_mean(len(r['scores']) for r in records):.1f} segments on average; the LLM reads the "
                 f"router's top-{top_k}. Random baselines are expectations over random rankings of each video's "
                 "segments; chance is 1 / options.", "",
                 "| metric | SALOVA (ours) | baseline | baseline value |", "|---|---|---|---|"]
        headline = [("Recall@1", "sweep.recall@1", "random_retrieval.expected_recall@1"),
                    ("Recall@5", "sweep.recall@5", "random_retrieval.expected_recall@5"),
                    (f"Recall@k (k={top_k})", f"sweep.recall@{top_k}", f"random_retrieval.expected_recall@{top_k}"),
                    ("mAP", "sweep.map", "random_retrieval.expected_map"),
                    (f"answer segment in top-{top_k} (hit@k)", f"sweep.hit@{top_k}",
                     f"random_retrieval.expected_hit@{top_k}")]
        for label, ours, base in headline:
            lines.append(f"| {label} | {metrics[ours]:.3f} | random ranking | {metrics[base]:.3f} |")
        if qa:
            lines.append(f"| QA accuracy | {metrics['ablation.full.qa_accuracy']:.3f} | chance | "
                         f"{metrics['chance.qa_accuracy']:.3f} |")
            if "text_prior.qa_accuracy" in metrics:
                lines.append(f"| QA accuracy | {metrics['ablation.full.qa_accuracy']:.3f} | text-only prior (per "
                             f"template, the option most often right in train; world.json) | "
                             f"{metrics['text_prior.qa_accuracy']:.3f} |")
        most = max(len(r["scores"]) for r in records)
        lines += ["", f"Held-out videos where the router puts the answer segment in its top-{top_k} for most "
                      f"queries: {metrics['videos_with_answer_in_top_k']:.0%}. With "
                      f"{_mean(len(r['scores']) for r in records):.1f} segments per video a random ranking already "
                      f"reaches Recall@5 {metrics['random_retrieval.expected_recall@5']:.2f}, and every k >= {most} "
                      "keeps all segments: longer videos (more scenes) make the high-k numbers informative.", "",
                  "### k sweep: retrieval", "", "| k | Recall@k | hit@k | random Recall@k | random hit@k |",
                  "|---|---|---|---|---|"]
        for k in ks:
            lines.append(f"| {k} | {metrics[f'sweep.recall@{k}']:.3f} | {metrics[f'sweep.hit@{k}']:.3f} | "
                         f"{metrics[f'random_retrieval.expected_recall@{k}']:.3f} | "
                         f"{metrics[f'random_retrieval.expected_hit@{k}']:.3f} |")
        lines.append("")
        if qa:
            lines += ["### QA accuracy: k sweep and FocusFast ablations (one trained model, inference-time variants)",
                      "", "| variant | what the LLM reads | QA accuracy |", "|---|---|---|"]
            described = {
                "full": f"router top-{top_k} + one global token per segment (FocusFast)"
                        + ("" if self.cfg.focusfast else "; FocusFast off in this config"),
                "no_focusfast": f"router top-{top_k} only, no global tokens",
                "global_only": "one global token per segment, no focused segment",
                "no_video": "no video at all (the LLM's language prior)",
                "oracle_segments": "ground-truth segments + global tokens (routing upper bound)",
            }
            for name in variants:
                what = described.get(name, f"router top-{name[1:]} + global tokens")
                lines.append(f"| {name} | {what} | {metrics[f'ablation.{name}.qa_accuracy']:.3f} |")
            lines += [f"| chance | 1 / options | {metrics['chance.qa_accuracy']:.3f} |", ""]
        lines += ["### Published numbers (FACTS.md; real benchmarks, not comparable to the synthetic world)", "",
                  "| what | paper |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in PAPER_NUMBERS.items()]
        lines += ["", "### Held-out examples: router score per segment (answer segments in orange)", ""]
        examples, seen_videos = [], set()
        for record in qa or records:  # the first question of each of the first videos
            if record["key"] not in seen_videos and len(examples) < self.cfg.report_examples:
                seen_videos.add(record["key"])
                examples.append(record)
        for i, record in enumerate(examples):
            name = f"salova_example_{i}.png"
            self._plot_example(record, fig_dir / name, top_k)
            predicted = record["predictions"].get("full")
            answer = f"answer: **{record['answer']}**" if predicted is None else (
                f"options: {' / '.join(record['options'])}; predicted **{record['options'][predicted]}**, "
                f"true **{record['answer']}**")
            top = torch.topk(record["scores"], min(top_k, len(record["scores"]))).indices
            positives = [j for j, v in enumerate(record["labels"].tolist()) if v > 0.5]
            lines += [f"**{record['key']}**: *{record['text']}*  ", f"{answer}  ",
                      f"answer segments {positives}, router top-{top_k} {sorted(top.tolist())}", "",
                      f"![example {i}]({name})", ""]
        return metrics, "\n".join(lines)

    def _datamodule(self):
        return getattr(self._trainer, "datamodule", None) if self._trainer is not None else None

    def _test_split(self) -> str:
        """The split the test stage read: "test", or "val" while choosing a config (data.test_split)."""
        config = getattr(self._datamodule(), "config", None)
        return getattr(config, "test_split", "test")

    def _world_chance(self, split: str) -> dict[str, float]:
        """The synthetic world's recorded chance levels (world.json, through the datamodule), {} without them."""
        world_chance = getattr(self._datamodule(), "world_chance", None)
        return world_chance(split) if world_chance is not None else {}

    @staticmethod
    def _plot_example(record: dict, path: Path, top_k: int) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        scores = record["scores"].tolist()
        chosen = set(torch.topk(record["scores"], min(top_k, len(scores))).indices.tolist())
        colours = ["tab:orange" if v > 0.5 else "tab:blue" for v in record["labels"].tolist()]
        fig, ax = plt.subplots(figsize=(max(3.5, 0.45 * len(scores) + 1.5), 2.4))
        ax.bar(range(len(scores)), scores, color=colours, edgecolor=["black" if j in chosen else "none"
                                                                    for j in range(len(scores))], linewidth=2)
        low, high = min(scores), max(scores)
        ax.set_ylim(low - 0.1 * (high - low + 1e-6), high + 0.1 * (high - low + 1e-6))
        ax.set_xticks(range(len(scores)))
        ax.set_xlabel("segment (orange: holds the answer; black edge: router top-k)", fontsize=7)
        ax.set_ylabel("router score", fontsize=7)
        title = record["text"] if len(record["text"]) < 70 else record["text"][:67] + "..."
        ax.set_title(title, fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        plt.close(fig)

    # ----------------------------------------------------------------- optimiser
    def configure_optimizers(self):
        o = self.cfg.optim
        groups: dict[tuple[float, bool], list[nn.Parameter]] = {}
        lr_of = {"vision": o.vision_lr, "llm": o.llm_lr}
        for name, param in self.model.named_parameters():
            if not param.requires_grad:
                continue
            lr = lr_of.get(name.split(".", 1)[0], o.lr)
            decay = param.dim() >= 2 and "index" not in name  # no decay on norms, biases, scales, embeddings
            groups.setdefault((lr, decay), []).append(param)
        optimizer = torch.optim.AdamW(
            [{"params": p, "lr": lr, "weight_decay": o.weight_decay if decay else 0.0}
             for (lr, decay), p in groups.items()], betas=tuple(o.betas))
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(o.warmup_ratio * total)

        def schedule(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = (step - warmup) / max(1, total - warmup)
            return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _mean(values) -> float:
    values = list(values)
    return sum(values) / len(values) if values else float("nan")


def _random_hit(labels: Tensor, k: int) -> float:
    """P(a random ranking of S segments, P relevant, puts a relevant one in its top k) = 1 - C(S-P, k) / C(S, k)."""
    s, p = len(labels), int((labels > 0.5).sum())
    k = min(k, s)
    return 1.0 - math.comb(s - p, k) / math.comb(s, k)
