"""Lightning wiring of Video-Ma²mba: one `model_step`, metrics per stage, the paper's optimiser, the report.

Logged: `{train,val,test}/loss` and `/perplexity` (over the labelled tokens: captions in stages 1 and 1.5,
answers in stage 2), `{val,test}/qa_accuracy` (multiple-choice QA scored by option likelihood, on every
whole-video item with questions).
"""
from __future__ import annotations

import math
import pathlib
from typing import Callable, Optional

import lightning as L
import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_modules.common.metrics import MultipleChoiceAccuracy

from .config import Ma2mbaConfig
from .model import Question, SpecialTokens, VideoMa2mba

# Published results (papers/FACTS.md) for context: real benchmarks, not our synthetic world.
PAPER_RESULTS = (
    ("Video-Ma²mba 0.7B (370M LM)", "37.4 / 35.0 / 26.8 / 33.1", "34.0"),
    ("Video-Ma²mba 1.8B (1.3B LM)", "49.4 / 39.2 / 31.9 / 40.3", "38.0"),
    ("Video-Ma²mba 3.1B (2.7B LM)", "57.6 / 42.7 / 35.4 / 45.2", "43.0"),
)


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value for b vs c discordant pairs: P(|Binomial(b + c, 1/2) - mid| >= observed)."""
    n = b + c
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(b, c) + 1)) / 2 ** n
    return min(1.0, 2 * tail)


def discordant(paired: list[dict]) -> tuple[int, int]:
    """Test records asked with their own and with another video: (# right only with their own video, # right only
    with the other), the counts the McNemar test compares."""
    only_own = sum(r["pred"] == r["answer"] != r["pred_other_video"] for r in paired)
    only_other = sum(r["pred_other_video"] == r["answer"] != r["pred"] for r in paired)
    return only_own, only_other


class Perplexity(Metric):
    """exp(total NLL / total tokens) over everything seen; update(mean_nll, token_count)."""

    full_state_update = False
    higher_is_better = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.add_state("nll", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("tokens", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, mean_nll: Tensor, count: Tensor) -> None:
        self.nll += mean_nll.detach().double() * count
        self.tokens += count

    def compute(self) -> Tensor:
        if self.tokens == 0:
            raise ValueError("Perplexity.compute: no labelled tokens were seen")
        return torch.exp(self.nll / self.tokens)


class Ma2mbaModule(L.LightningModule):
    """Args:
        config: the model section of the run config.
        tokens: ids of <|frame|>, <|pad|>, <|endoftext|> in the data's tokenizer.
        baselines: reference accuracies from the data (e.g. {"chance.qa_accuracy": .25, "prior.qa_accuracy": .32}).
        decode: ids -> text, to show free-form answers in the report (optional).
    """

    def __init__(self, config: Ma2mbaConfig, tokens: SpecialTokens, baselines: Optional[dict] = None,
                 decode: Optional[Callable[[list[int]], str]] = None):
        super().__init__()
        self.config = config
        self.model = VideoMa2mba(config, tokens)
        self.baselines = dict(baselines or {})
        self.decode = decode
        # Stage 1 aligns the projector alone; the tower freezes itself when config.vision.frozen.
        self.model.lm.requires_grad_(config.trains_lm)
        self.train_ppl, self.val_ppl, self.test_ppl = Perplexity(), Perplexity(), Perplexity()
        self.val_qa, self.test_qa = MultipleChoiceAccuracy(), MultipleChoiceAccuracy()
        self.test_records: list[dict] = []
        # The wrong-video control: the last two distinct test videos seen, (key, video, states after its prefix).
        self._this_video: Optional[tuple] = None
        self._other_video: Optional[tuple] = None

    # ------------------------------------------------------------------------------------------ steps
    def model_step(self, batch: dict) -> tuple[Tensor, Tensor]:
        """-> (mean NLL over the batch's labelled tokens, number of labelled tokens)."""
        return self.model(batch["input_ids"], batch["labels"], batch["videos"], batch["lengths"])

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        loss, count = self.model_step(batch)
        self.train_ppl(loss, count)
        bs = len(batch["videos"])
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("train/perplexity", self.train_ppl, on_step=False, on_epoch=True, batch_size=bs)
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "val", self.val_ppl, self.val_qa)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._eval_step(batch, "test", self.test_ppl, self.test_qa)

    def on_test_epoch_start(self) -> None:
        self.test_records = []
        self._this_video = self._other_video = None  # the previous test video: the "wrong video" baseline

    def _eval_step(self, batch: dict, split: str, ppl: Perplexity, qa: MultipleChoiceAccuracy) -> None:
        loss, count = self.model_step(batch)
        bs = len(batch["videos"])
        if count > 0:
            ppl(loss, count)
            self.log(f"{split}/loss", loss, batch_size=bs)
            self.log(f"{split}/perplexity", ppl, batch_size=bs)
        if not self.config.eval_qa:
            return
        scored = 0
        for video_ids, video, questions, key in zip(batch["video_ids"], batch["videos"], batch["questions"],
                                                    batch["keys"]):
            if video_ids is None or not questions:
                continue
            states = self.model.video_state(video_ids, video)
            if split == "test" and (self._this_video is None or self._this_video[0] != key):
                # data.question_first gives one item per question, several in a row with the same video
                self._other_video, self._this_video = self._this_video, (key, video, states)
            for q in questions:
                question = Question(q["prompt"], q["options"], q["answer"])
                scores = self.model.score_options(states, question)
                qa.update(scores[None], torch.tensor([q["answer"]], device=scores.device))
                scored += 1
                if split == "test":
                    self._record(key, q, scores, states, question)
        if scored:
            self.log(f"{split}/qa_accuracy", qa, batch_size=scored)

    def _record(self, key: str, q: dict, scores: Tensor, states, question: Question) -> None:
        record = {"key": key, "question": q["question"], "options": q["option_texts"], "answer": q["answer"],
                  "pred": int(scores.argmax()), "scores": [round(float(s), 3) for s in scores],
                  "template": q["template"]}
        if self._other_video is not None:
            # The same question asked about another video: what the LM gets from the text alone (its priors).
            record["pred_other_video"] = int(self.model.score_options(self._other_states(q), question).argmax())
        if self.decode is not None and len(self.test_records) < self.config.report_examples:
            ids = self.model.generate_answer(states, q["prompt"])
            record["generated"] = self.decode(ids.tolist())
        self.test_records.append(record)

    def _other_states(self, q: dict) -> list:
        """The LM's state after the previous test video; a question asked before the frames (`preamble`,
        data.question_first) is asked before that video too, so only the video differs."""
        _, video, states = self._other_video
        if "preamble" not in q:
            return states
        preamble = q["preamble"]
        frames = preamble.new_full((video.shape[0],), self.model.tokens.frame)
        return self.model.video_state(torch.cat([preamble, frames]), video)

    # ------------------------------------------------------------------------------------------ optimiser
    def configure_optimizers(self):
        return self.build_optimizer(max(1, int(self.trainer.estimated_stepping_batches)))

    def build_optimizer(self, total: int) -> dict:
        """AdamW over the parameters this stage trains, in groups (vision / LM + projector, decayed or not),
        with linear warmup over `optim.warmup_ratio * total` steps, then a cosine to `min_lr_ratio`."""
        o = self.config.optim
        groups = []
        vision_ids = {id(p) for p in self.model.vision.parameters()}
        for name, lr, params in (
            ("vision", o.vision_lr, [p for p in self.model.vision.parameters() if p.requires_grad]),
            ("lm+projector", o.lr, [p for p in self.model.parameters() if p.requires_grad and id(p) not in vision_ids]),
        ):
            # Matrices decay; vectors (norms, biases, A_log, D, dt_bias) do not, as in mamba_ssm and LLaVA.
            decay = [p for p in params if p.dim() >= 2]
            no_decay = [p for p in params if p.dim() < 2]
            groups += [{"name": f"{name}", "params": decay, "lr": lr, "weight_decay": o.weight_decay},
                       {"name": f"{name}/no_decay", "params": no_decay, "lr": lr, "weight_decay": 0.0}]
        groups = [g for g in groups if g["params"]]
        if not groups:
            raise ValueError(f"model.stage {self.config.stage}: no parameter trains")
        optimizer = torch.optim.AdamW(groups, betas=(o.beta1, o.beta2))
        warmup = int(o.warmup_ratio * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            progress = min(1.0, (step - warmup) / max(1, total - warmup))
            return o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------------------------------ report
    def report(self, fig_dir: pathlib.Path) -> tuple[dict[str, float], str]:
        """Metrics for metrics.json (ours unprefixed, baselines prefixed) and the report's markdown section."""
        records = self.test_records
        metrics: dict[str, float] = {}
        logged = self.trainer.callback_metrics if self._trainer is not None else {}
        if "test/perplexity" in logged:  # the metric object itself is reset once Lightning has logged it
            metrics["perplexity"] = float(logged["test/perplexity"])
        lines = ["## Video-Ma²mba", ""]
        if not records:
            lines.append("No multiple-choice questions were scored on the test split (stage "
                         f"{self.config.stage} items carry none, or `model.eval_qa` is off).")
            return {**metrics, **self.baselines}, "\n".join(lines) + "\n"
        correct = [r["pred"] == r["answer"] for r in records]
        metrics["qa_accuracy"] = sum(correct) / len(records)
        metrics["chance.qa_accuracy"] = sum(1 / len(r["options"]) for r in records) / len(records)
        other = [r for r in records if "pred_other_video" in r]
        if other:
            metrics["other_video.qa_accuracy"] = sum(r["pred_other_video"] == r["answer"] for r in other) / len(other)
            # Paired: the same questions, own video vs the previous one. Only the discordant questions
            # (right with one video, wrong with the other) say whether the video helps.
            only_own, only_other = discordant(other)
            metrics["video_gain.qa_accuracy"] = (only_own - only_other) / len(other)
            metrics["video_gain.p_value"] = mcnemar_p(only_own, only_other)
        for k, v in self.baselines.items():
            metrics.setdefault(k, v)
        notes = {"chance": "uniform guess among the options",
                 "prior": "text-only: per question type, the answer most often right in train (world.json)",
                 "other_video": "this model, each question asked after the previous test video instead of its own"}
        lines += [f"Multiple-choice QA on the test split: {len(records)} questions, each option scored by its "
                  f"log-likelihood ({self.config.option_score} over its tokens) given the video and the question; "
                  "the video prefix runs once and every option continues from the recurrent state.", "",
                  "| | QA accuracy | |", "|---|---|---|",
                  f"| **ours** | **{metrics['qa_accuracy']:.3f}** | this model, each question after its own video |"]
        for k in sorted(k for k in metrics if k.endswith(".qa_accuracy") and not k.startswith("video_gain")):
            name = k.split(".")[0]
            lines.append(f"| {name} | {metrics[k]:.3f} | {notes.get(name, '')} |")
        if other:
            lines += ["", f"**Does the model use the video?** Own video minus the previous video's, on the same "
                      f"{len(other)} questions: {metrics['video_gain.qa_accuracy']:+.3f} ({only_own} questions right "
                      f"only with their own video, {only_other} only with the other; exact McNemar test, two-sided "
                      f"p = {metrics['video_gain.p_value']:.2g})."]
        if "perplexity" in metrics:
            lines += ["", f"Answer-token perplexity: {metrics['perplexity']:.3f}."]
        lines += ["", *self._per_template(records, fig_dir), "", "### Examples", ""]
        for r in records[: self.config.report_examples]:
            options = "; ".join(f"{'**' if i == r['answer'] else ''}{o}{'**' if i == r['answer'] else ''} ({s})"
                                for i, (o, s) in enumerate(zip(r["options"], r["scores"])))
            verdict = "right" if r["pred"] == r["answer"] else "wrong"
            lines.append(f"- `{r['key']}` {r['question']} — options (log-likelihood): {options} — picked "
                         f"*{r['options'][r['pred']]}* ({verdict})"
                         + (f"; free-form answer: \"{r['generated'].strip()}\"" if "generated" in r else ""))
        lines += ["", "### Published numbers (context only: real benchmarks, real scale)", "",
                  "| model | Video-MME short/med/long/avg | LongVideoBench val |", "|---|---|---|",
                  *[f"| {m} | {v} | {b} |" for m, v, b in PAPER_RESULTS]]
        return metrics, "\n".join(lines) + "\n"

    def _per_template(self, records: list[dict], fig_dir: pathlib.Path) -> list[str]:
        """Per question type: accuracy, the wrong-video control and its paired test (a table and a bar chart)."""
        by: dict[str, list[dict]] = {}
        for r in records:
            by.setdefault(r["template"] or "all", []).append(r)
        if len(by) < 2:
            return []
        names = sorted(by)
        paired = {n: [r for r in by[n] if "pred_other_video" in r] for n in names}

        def accuracy(rs: list[dict], pred: str = "pred") -> float:
            return sum(r[pred] == r["answer"] for r in rs) / len(rs)

        lines = ["| question type | n | accuracy | other video | right only with own / only with other video (p) |",
                 "|---|---|---|---|---|"]
        for n in names:
            control = gain = "–"
            if paired[n]:
                only_own, only_other = discordant(paired[n])
                control = f"{accuracy(paired[n], 'pred_other_video'):.3f}"
                gain = f"{only_own} / {only_other} ({mcnemar_p(only_own, only_other):.2g})"
            lines.append(f"| {n} | {len(by[n])} | {accuracy(by[n]):.3f} | {control} | {gain} |")
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 3))
        x = list(range(len(names)))
        ax.bar([i - 0.2 for i in x], [accuracy(by[n]) for n in names], width=0.4, color="tab:blue", label="ours")
        if any(paired.values()):
            ax.bar([i + 0.2 for i in x], [accuracy(paired[n], "pred_other_video") if paired[n] else 0.0 for n in names],
                   width=0.4, color="tab:orange", label="ours, other video")
        chance = sum(1 / len(r["options"]) for r in records) / len(records)
        ax.axhline(chance, color="grey", linestyle="--", label="chance")
        ax.set_xticks(x, names, rotation=30, ha="right", fontsize=7)
        ax.set_ylabel("QA accuracy")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(fig_dir / "ma2mba_qa_by_type.png", dpi=120)
        plt.close(fig)
        return lines + ["", "![QA accuracy per question type](ma2mba_qa_by_type.png)"]
