"""Online inference: frames arrive one at a time; a runner decides when to speak and calls a responder.

`StreamingRunner` is STRIDE's loop (FACTS.md, "Inference"):
- a window of the last W slots ends at the newest frame; every `stride` frames the denoiser runs on it;
- slots before the stream start or before the end of the last completed span are unseen (fixed to 0);
- a label from an earlier run is kept (given to the denoiser) only once it is stable: it came out the
  same in `stable_runs` consecutive runs, the last time with confidence >= threshold; otherwise it is
  re-masked and predicted again with the new frames in view;
- K unmasking steps per run (`ActivationDenoiser.denoise`);
- a run of active slots [a, b) is a span; it becomes a trigger once it has closed and its end lies
  >= close_gap_s before the stream clock (the end of the newest frame: frame n covers [n, n+1), so the
  clock is n + 1). A perfect predictor thus triggers exactly close_gap_s after the span ends, which is
  the reference response time of the TimeDiff metric. Span rules (StreamingConfig): a run closes only
  at `close_run` inactive slots (shorter dips are bridged), spans under `min_span` slots are dropped,
  and with `confirm_stable` STRIDE triggers a span only once its labels are all stable (kept);
- single-event mode stops after the first trigger, multi-event mode after `max_triggers`.

`ThresholdHeadRunner` and `LiveTokenRunner` are the baselines' loops over the same frames, clock and
span bookkeeping, so that only the decision rule differs.

Per-frame cost is constant: the window is a fixed-size buffer, span bookkeeping only looks inside the
window (a run that began before it is remembered by one integer), and the frame source keeps O(1) state
(the features of an O(1)-state downstream such as Video-Ma²mba's recurrent state).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Protocol

import torch
from torch import Tensor

from lightning_modules.stride.config import StreamingConfig
from lightning_modules.stride.model import ACTIVE, INACTIVE, MASK, RESPOND_END, RESPOND_START, SILENT


@dataclass
class Trigger:
    """One response: the span it is about (seconds, [start, end)), when it was raised, and the answer."""

    start: float
    end: float
    time: float  # stream clock (seconds) when raised
    frame: int  # index of the newest frame then
    answer: str | None = None
    responder_ms: float = 0.0


class Responder(Protocol):
    """Downstream answer on the frames so far: called at a trigger, returns the text to speak."""

    def __call__(self, query: str, trigger: Trigger) -> str: ...


class FrameSource(Protocol):
    """Turns each incoming item (a frame, or a precomputed feature) into the slot's feature (F,).

    Must keep O(1) state: it is called once per frame for the whole stream. A downstream model that
    also answers (Ma²mba) implements this by stepping its recurrent state and summarizing it.
    """

    def reset(self) -> None: ...

    def __call__(self, item: Tensor) -> Tensor: ...


class Identity:
    """FrameSource for precomputed per-frame features."""

    def reset(self) -> None:
        pass

    def __call__(self, item: Tensor) -> Tensor:
        return item


@dataclass
class _Window:
    """Fixed-size per-slot state of the last W slots; index W-1 is the newest slot."""

    feats: Tensor  # (W, F)
    labels: Tensor  # (W,) long, current label (0 where none yet)
    known: Tensor  # (W,) bool, a label exists from an earlier run
    stable: Tensor  # (W,) bool
    agree: Tensor  # (W,) long, consecutive runs with the same label
    sure: Tensor  # (W,) bool, the current label came with confidence >= threshold (or was given)

    @classmethod
    def empty(cls, window: int, dim: int) -> "_Window":
        return cls(torch.zeros(window, dim), torch.zeros(window, dtype=torch.long),
                   torch.zeros(window, dtype=torch.bool), torch.zeros(window, dtype=torch.bool),
                   torch.zeros(window, dtype=torch.long), torch.zeros(window, dtype=torch.bool))

    def shift_in(self, feat: Tensor) -> tuple[int, bool]:
        """Drop the oldest slot, append a fresh one; returns the dropped slot's (label, known)."""
        dropped = int(self.labels[0]), bool(self.known[0])
        self.feats = torch.cat([self.feats[1:], feat.reshape(1, -1).to(self.feats.dtype)])
        for name in ("labels", "known", "stable", "agree", "sure"):
            old = getattr(self, name)
            setattr(self, name, torch.cat([old[1:], old.new_zeros(1)]))
        return dropped


class _OnlineRunner:
    """Frame clock, window buffer, span extraction, triggers and the responder call (shared by all)."""

    def __init__(self, cfg: StreamingConfig, query: str, query_ids: Tensor, feat_dim: int,
                 source: FrameSource | None = None, responder: Responder | Callable | None = None):
        if query_ids.dim() != 1:
            raise ValueError(f"query_ids must be a 1-D tensor of token ids, got shape {tuple(query_ids.shape)}")
        self.cfg, self.query, self.query_ids = cfg, query, query_ids
        self.source = source or Identity()
        self.responder = responder
        self.window = _Window.empty(cfg.window, feat_dim)
        self.frame = -1  # index of the newest frame
        self.completed_end = 0  # end slot (exclusive) of the last triggered span
        self.open_start: int | None = None  # start of an active run that began before the window
        self.open_gap = 0  # inactive slots that followed that run and already left the window (< close_run)
        self.triggers: list[Trigger] = []
        self.p_active: list[float] = []  # per slot, the latest activation probability (for plots)
        self.done = False
        self.source.reset()

    # ---- bookkeeping
    @property
    def clock(self) -> float:
        return float(self.frame + 1)

    def slot_of(self, j: int) -> int:
        """Stream slot index of window position j."""
        return self.frame - self.cfg.window + 1 + j

    def seen(self, context_from: int) -> Tensor:
        """(W,) bool: window slots at or after `context_from` (and after the stream start)."""
        slots = torch.arange(self.cfg.window) + self.slot_of(0)
        return slots >= max(0, context_from)

    def push(self, item: Tensor) -> list[Trigger]:
        """Feed the next frame; returns the triggers it raised (usually none)."""
        self.advance(item)
        if self.done or not self.due():
            return []
        outputs = self.compute(self.model, *(x[None] for x in self.inputs()))
        return self.apply(*(x[0] for x in outputs))

    def advance(self, item: Tensor) -> None:
        """Take in the next frame: feature, window shift, and the run that may have begun before the window."""
        feat = self.source(item)
        self.frame += 1
        label, known = self.window.shift_in(feat)
        left = self.slot_of(0) - 1  # the slot that just left the window
        if left >= self.completed_end and known:  # the same state machine as `closed_spans`, on that slot
            if label == ACTIVE:
                self.open_start = left if self.open_start is None else self.open_start
                self.open_gap = 0
            elif self.open_start is not None:
                self.open_gap += 1
                if self.open_gap >= self.cfg.close_run:  # the run ended out of view
                    self.open_start, self.open_gap = None, 0
        self.p_active.append(0.0)

    def run(self, items) -> list[Trigger]:
        """Feed a whole stream (an iterable of frames or a (T, F) tensor); returns all triggers."""
        for item in items:
            self.push(item)
        return self.triggers

    # ---- the decision rule, split so that many streams can share one batched model call
    def due(self) -> bool:
        """Whether the model runs at this frame."""
        return True

    def inputs(self) -> tuple[Tensor, ...]:
        """This stream's model inputs at this frame (no batch dimension)."""
        raise NotImplementedError

    @staticmethod
    def compute(model, *batched: Tensor) -> tuple[Tensor, ...]:
        """One batched model call over the inputs of several streams."""
        raise NotImplementedError

    def apply(self, *outputs: Tensor) -> list[Trigger]:
        """Update this stream's state from its share of the outputs; returns the triggers raised."""
        raise NotImplementedError

    def _record(self, p: Tensor, where: Tensor) -> None:
        """Keep the latest activation probability of the window slots selected by `where` (W,) bool."""
        first = self.slot_of(0)
        for j in torch.nonzero(where).flatten().tolist():
            if first + j >= 0:
                self.p_active[first + j] = float(p[j])

    def closed_spans(self) -> list[tuple[int, int]]:
        """Closed active runs [a, b) of the window, at or after the last completed span, that may trigger.

        A run closes at a stretch of `close_run` known inactive slots (for which `closes` holds); a
        shorter inactive gap followed by an active slot is bridged, so the run goes on through it. A closed
        run triggers once its end b lies >= close_gap_s before the clock, if it spans >= min_span slots.
        """
        spans = []
        first, w = self.slot_of(0), self.window
        start, gap = (self.open_start, self.open_gap) if first >= self.completed_end else (None, 0)
        for j in range(self.cfg.window):
            slot = first + j
            if slot < max(0, self.completed_end) or not bool(w.known[j]):
                start, gap = None, 0
                continue
            if int(w.labels[j]) == ACTIVE:
                start, gap = (slot if start is None else start), 0
                continue
            if start is None:
                continue
            gap += 1
            if gap >= self.cfg.close_run and self.closes(max(0, j - gap + 1), j):
                end = slot - gap + 1  # the first inactive slot after the run
                if end - start >= self.cfg.min_span and self.clock - end >= self.cfg.close_gap_s \
                        and self.confirmed(max(0, start - first), j):
                    spans.append((start, end))
                start, gap = None, 0
        return spans

    def closes(self, first: int, last: int) -> bool:
        """Whether the inactive stretch at window positions [first, last] may close the active run before it
        (an unsure end keeps the run open: the next frames may bridge it or make the end sure)."""
        return True

    def confirmed(self, first: int, last: int) -> bool:
        """Whether the closed run and its closing stretch, at window positions [first, last], may trigger now."""
        return True

    def fire(self, start: float, end: float) -> Trigger:
        trigger = Trigger(start=float(start), end=float(end), time=self.clock, frame=self.frame)
        if self.responder is not None:
            began = time.perf_counter()
            trigger.answer = self.responder(self.query, trigger)
            trigger.responder_ms = 1e3 * (time.perf_counter() - began)
        self.triggers.append(trigger)
        if not self.cfg.multi_event or len(self.triggers) >= self.cfg.max_triggers:
            self.done = True
        return trigger

    def trigger_closed_spans(self) -> list[Trigger]:
        raised = []
        for start, end in self.closed_spans():
            if self.done:
                break
            raised.append(self.fire(start, end))
            self.completed_end, self.open_start, self.open_gap = end, None, 0
        return raised



def run_lockstep(runners: list[_OnlineRunner], streams: list[Tensor]) -> None:
    """Feed many streams frame by frame, batching the model calls of the runners due at each frame.

    All runners must be of one class and share one model; the result equals feeding each on its own.
    """
    if len(runners) != len(streams):
        raise ValueError(f"run_lockstep: {len(runners)} runners but {len(streams)} streams")
    if len({type(r) for r in runners}) > 1 or len({id(r.model) for r in runners}) > 1:
        raise ValueError("run_lockstep: runners must be of one class and share one model")
    for n in range(max((len(s) for s in streams), default=0)):
        due = []
        for runner, stream in zip(runners, streams):
            if n < len(stream):
                runner.advance(stream[n])
                if not runner.done and runner.due():
                    due.append(runner)
        if not due:
            continue
        batched = [torch.stack(xs) for xs in zip(*(r.inputs() for r in due))]
        outputs = due[0].compute(due[0].model, *batched)
        for i, runner in enumerate(due):
            runner.apply(*(x[i] for x in outputs))


class StreamingRunner(_OnlineRunner):
    """STRIDE online: periodic K-step denoising of the window with stable-or-remask, then triggers.

    model: anything with `denoise(feats, seen, query_ids, tokens, steps, threshold)` as
    `ActivationDenoiser.denoise` (batched, N = 1 here).
    """

    def __init__(self, model, cfg: StreamingConfig, query: str, query_ids: Tensor, feat_dim: int,
                 source: FrameSource | None = None, responder: Responder | Callable | None = None):
        super().__init__(cfg, query, query_ids, feat_dim, source, responder)
        self.model = model

    def due(self) -> bool:
        return (self.frame + 1) % self.cfg.stride == 0

    def inputs(self) -> tuple[Tensor, ...]:
        w = self.window
        seen = self.seen(self.completed_end)
        tokens = torch.where(seen & w.stable, w.labels, torch.full_like(w.labels, MASK))
        tokens = torch.where(seen, tokens, torch.full_like(w.labels, INACTIVE))
        return w.feats, seen, self.query_ids, tokens

    def compute(self, model, feats, seen, query_ids, tokens) -> tuple[Tensor, ...]:
        return model.denoise(feats, seen, query_ids, tokens, self.cfg.steps, self.cfg.threshold,
                             self.cfg.active_threshold) + (seen, tokens)

    def apply(self, labels, p_active, confident, seen, tokens) -> list[Trigger]:
        w = self.window
        labels = torch.where(seen, labels, torch.zeros_like(labels))
        predicted = seen & (tokens == MASK)
        same = w.known & (labels == w.labels)
        w.agree = torch.where(predicted, torch.where(same, w.agree + 1, torch.ones_like(w.agree)), w.agree)
        w.stable = torch.where(predicted, (w.agree >= self.cfg.stable_runs) & confident, w.stable & seen)
        w.labels, w.known, w.sure = labels, seen, confident & seen
        self._record(p_active, seen)
        return self.trigger_closed_spans()


    def closes(self, first: int, last: int) -> bool:
        """With close_confident: some slot of the inactive stretch [first, last] is sure."""
        return not self.cfg.close_confident or bool(self.window.sure[first:last + 1].any())

    def confirmed(self, first: int, last: int) -> bool:
        """With confirm_stable: every slot of the run and of its closing stretch is stable (kept)."""
        return not self.cfg.confirm_stable or bool(self.window.stable[first:last + 1].all())


class _CausalRunner(_OnlineRunner):
    """Baselines: a causal model scores the newest frame over the whole window (no slot is revisited)."""

    def __init__(self, model, cfg: StreamingConfig, query: str, query_ids: Tensor, feat_dim: int,
                 source: FrameSource | None = None, responder: Responder | Callable | None = None):
        super().__init__(cfg, query, query_ids, feat_dim, source, responder)
        self.model = model

    def inputs(self) -> tuple[Tensor, ...]:
        return self.window.feats, self.seen(0), self.query_ids

    @staticmethod
    @torch.no_grad()
    def compute(model, feats, seen, query_ids) -> tuple[Tensor, ...]:
        return (model(feats, seen, query_ids)[:, -1],)  # the newest frame's output


class ThresholdHeadRunner(_CausalRunner):
    """MMDuet/Dispider style: frame active iff sigmoid(score) >= threshold; spans and triggers as STRIDE's."""

    def __init__(self, model, cfg: StreamingConfig, threshold: float, *args, **kwargs):
        super().__init__(model, cfg, *args, **kwargs)
        self.threshold = threshold

    def apply(self, logit: Tensor) -> list[Trigger]:
        p = float(torch.sigmoid(logit))
        self.window.labels[-1] = int(p >= self.threshold)
        self.window.known[-1] = True
        self.p_active[-1] = p
        return self.trigger_closed_spans()


class LiveTokenRunner(_CausalRunner):
    """VideoLLM-online style: respond iff p(silent frame token) < threshold; the respond kind (the event
    started / is over) is the likelier of the two. A span runs from a "started" response to the next
    "over" response; an "over" response is the trigger (LIVE answers when it decides to speak)."""

    def __init__(self, model, cfg: StreamingConfig, threshold: float, *args, **kwargs):
        super().__init__(model, cfg, *args, **kwargs)
        self.threshold = threshold
        self.started: int | None = None

    def apply(self, logits: Tensor) -> list[Trigger]:
        probs = logits.softmax(-1)
        self.p_active[-1] = float(1.0 - probs[SILENT])
        if float(probs[SILENT]) >= self.threshold:
            return []
        if float(probs[RESPOND_START]) >= float(probs[RESPOND_END]):
            if self.started is None:
                self.started = self.frame
            return []
        end = self.clock - self.cfg.close_gap_s
        start = self.started if self.started is not None and self.started < end else end - 1.0
        self.started = None
        return [self.fire(max(0.0, start), end)]
