"""The synthetic long-video world: its vocabulary, difficulty knobs, true state and annotations.

A video is a sequence of scenes cut hard one into the next. A scene has a textured, tinted
background and 1-4 coloured shapes; each shape lives in its own cell of a grid (so none can hide
another), moves in one of five ways, and may appear after the cut or leave before the next one.
Everything a caption, question or streaming query says is read off this state, never off pixels,
so the annotations are exact. The vocabulary is small and the cues strong (saturated colours on
dark backgrounds, shapes a third of a cell wide) so that small models learn it on a CPU.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

WORLD_VERSION = "longwatch-synthetic/1"

# Object colours: saturated and far apart in RGB (and in YUV after H.264 chroma subsampling).
COLOURS = {
    "red": (230, 25, 25), "green": (20, 200, 40), "blue": (40, 90, 255), "yellow": (250, 230, 20),
    "magenta": (235, 40, 225), "cyan": (30, 225, 235), "orange": (255, 140, 0), "white": (245, 245, 245),
}
# Background tints: dark and muted, named apart from the object colours.
TINTS = {
    "grey": (90, 90, 90), "navy": (20, 30, 110), "maroon": (110, 20, 35), "olive": (95, 95, 20),
    "teal": (10, 100, 95), "purple": (80, 25, 110), "brown": (105, 60, 25),
}
TEXTURES = ("plain", "striped", "checkered", "dotted", "gradient")
SHAPES = ("circle", "square", "triangle", "diamond", "cross")
SIZES = ("small", "big")
MOTIONS = ("stays still", "moves side to side", "moves up and down", "moves in circles", "moves diagonally")
NUMBERS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# The default world asks the first six; `WorldConfig.qa_templates` picks any of them. Most name an object and ask
# about its scene, so answering needs the object bound to the scene it was in; the last two need no binding, only
# what the video shows (which backgrounds occur, which one it ends on).
QA_TEMPLATES = ("colour_on_background", "count_on_background", "appears_after_leaves",
                "motion_of_object", "background_of_object", "scenes_with_object",
                "background_in_video", "background_at_end")
DEFAULT_QA_TEMPLATES = QA_TEMPLATES[:6]


@dataclass
class WorldConfig:
    """Difficulty knobs of the world. Defaults make short, easy videos; raise them for long ones."""

    minutes: tuple[float, float] = (1.0, 4.0)   # video length range; each video draws whole seconds in it
    size: int = 64                              # frame height = width in pixels (even)
    scenes: tuple[int, int] = (3, 8)            # scenes per video (fewer if they would last < min_scene_seconds)
    min_scene_seconds: int = 8
    objects: tuple[int, int] = (1, 4)           # coloured shapes per scene; distinct colours and shapes within one
    event_prob: float = 0.4                     # chance a shape appears after the cut, and (independently) leaves early
    revisit_prob: float = 0.15                  # chance a scene repeats an earlier scene's setup (same caption)
    distractors: int = 2                        # unannotated grey specks wandering over the background
    noise: float = 0.0                          # std of Gaussian pixel noise (0-255 scale)
    qa_per_video: int = 6
    qa_templates: tuple[str, ...] = DEFAULT_QA_TEMPLATES  # question types asked, drawn uniformly among them
    streaming_per_video: int = 3
    appear_span_seconds: int = 3                # an "appears" query is active this long after each appearance

    def __post_init__(self):
        self.minutes = tuple(float(m) for m in self.minutes)
        self.scenes = tuple(int(s) for s in self.scenes)
        self.objects = tuple(int(o) for o in self.objects)
        self.qa_templates = tuple(self.qa_templates)
        if not (len(self.minutes) == 2 and 0 < self.minutes[0] <= self.minutes[1]):
            raise ValueError(f"minutes must be (min, max) with 0 < min <= max, got {self.minutes}")
        if self.size < 16 or self.size % 2:
            raise ValueError(f"size must be an even number >= 16, got {self.size}")
        if not (len(self.scenes) == 2 and 1 <= self.scenes[0] <= self.scenes[1]):
            raise ValueError(f"scenes must be (min, max) with 1 <= min <= max, got {self.scenes}")
        if self.min_scene_seconds < 4:
            raise ValueError(f"min_scene_seconds must be >= 4, got {self.min_scene_seconds}")
        if self.minutes[0] * 60 < self.min_scene_seconds:
            raise ValueError(f"minutes[0] = {self.minutes[0]} is shorter than one scene ({self.min_scene_seconds} s)")
        if not (len(self.objects) == 2 and 1 <= self.objects[0] <= self.objects[1] <= len(SHAPES)):
            raise ValueError(f"objects must be (min, max) with 1 <= min <= max <= {len(SHAPES)}, got {self.objects}")
        for name in ("event_prob", "revisit_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        for name in ("distractors", "qa_per_video", "streaming_per_video"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        unknown = [t for t in self.qa_templates if t not in QA_TEMPLATES]
        if unknown or not self.qa_templates or len(set(self.qa_templates)) != len(self.qa_templates):
            raise ValueError(f"qa_templates must be distinct names out of {QA_TEMPLATES}, got {self.qa_templates}")
        if self.noise < 0:
            raise ValueError(f"noise must be >= 0, got {self.noise}")
        if self.appear_span_seconds < 1:
            raise ValueError(f"appear_span_seconds must be >= 1, got {self.appear_span_seconds}")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


@dataclass
class Shape:
    """One coloured shape of a scene. Times are whole seconds relative to the scene start."""

    colour: str
    shape: str
    size: str
    motion: str
    cell: int          # grid cell it lives in, row-major
    period: float      # seconds per motion cycle
    phase: float       # radians
    appear: int        # first visible second
    vanish: int        # first invisible second (== scene length when it stays to the cut)

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass
class Scene:
    start: int
    end: int
    texture: str
    tint: str
    shapes: list[Shape]
    revisit_of: int | None = None

    @property
    def length(self) -> int:
        return self.end - self.start

    @property
    def background(self) -> str:
        return f"{self.texture} {self.tint}"


@dataclass
class Video:
    duration: int
    scenes: list[Scene] = field(default_factory=list)


def video_from_state(scenes: list[dict], start: float = 0.0) -> Video:
    """The true state a sample keeps in json `meta.scenes` (absolute seconds, shapes' appear/vanish too) -> the
    `Video` it was drawn as, times made relative to `start` (a window of scenes may begin mid-video), so that
    `qa_candidates` asks of it exactly what the world could. Period and phase only drive rendering: left at 0."""
    return Video(duration=int(scenes[-1]["end"] - start) if scenes else 0, scenes=[
        Scene(int(sc["start"] - start), int(sc["end"] - start), sc["texture"], sc["tint"], revisit_of=sc["revisit_of"],
              shapes=[Shape(**{**shape, "appear": shape["appear"] - sc["start"], "vanish": shape["vanish"] - sc["start"]},
                            period=1.0, phase=0.0) for shape in sc["shapes"]])
        for sc in scenes])


def grid_side(cfg: WorldConfig) -> int:
    """Cells per row: one cell per shape, so shapes never cover one another."""
    return math.ceil(math.sqrt(cfg.objects[1]))


def sample_video(cfg: WorldConfig, rng: np.random.Generator) -> Video:
    """Draw a video's true state: duration, scene cuts, backgrounds, shapes, motions and events."""
    duration = int(rng.integers(math.ceil(cfg.minutes[0] * 60), math.floor(cfg.minutes[1] * 60) + 1))
    num_scenes = int(rng.integers(cfg.scenes[0], cfg.scenes[1] + 1))
    num_scenes = max(1, min(num_scenes, duration // cfg.min_scene_seconds))
    spare = duration - num_scenes * cfg.min_scene_seconds
    lengths = cfg.min_scene_seconds + rng.multinomial(spare, rng.dirichlet(np.full(num_scenes, 2.0)))
    cuts = np.concatenate([[0], np.cumsum(lengths)]).astype(int)

    video = Video(duration=duration)
    backgrounds = [(t, c) for t in TEXTURES for c in TINTS]
    used: set[tuple[str, str]] = set()
    for i in range(num_scenes):
        start, end = int(cuts[i]), int(cuts[i + 1])
        previous = video.scenes[-1] if video.scenes else None
        # A revisit repeats an earlier setup (not the one just cut from, or the cut would be invisible).
        earlier = [j for j, s in enumerate(video.scenes[:-1])
                   if s.revisit_of is None and previous is not None and s.tint != previous.tint]
        if earlier and rng.random() < cfg.revisit_prob:
            source = video.scenes[earlier[int(rng.integers(len(earlier)))]]
            video.scenes.append(_revisit(source, start, end, video.scenes.index(source), rng))
            continue
        # A new background: a fresh (texture, tint) if any is left, always a new tint across the cut.
        candidates = [b for b in backgrounds if b not in used and (previous is None or b[1] != previous.tint)]
        if not candidates:
            candidates = [b for b in backgrounds if previous is None or b[1] != previous.tint]
        texture, tint = candidates[int(rng.integers(len(candidates)))]
        used.add((texture, tint))
        video.scenes.append(Scene(start, end, texture, tint, _sample_shapes(cfg, end - start, rng)))
    return video


def _sample_shapes(cfg: WorldConfig, length: int, rng: np.random.Generator) -> list[Shape]:
    count = int(rng.integers(cfg.objects[0], cfg.objects[1] + 1))
    colours = rng.choice(len(COLOURS), size=count, replace=False)
    shapes = rng.choice(len(SHAPES), size=count, replace=False)
    cells = np.sort(rng.choice(grid_side(cfg) ** 2, size=count, replace=False))
    out = []
    for colour, shape, cell in zip(colours, shapes, cells):
        appear, vanish = 0, length
        # Events need room: at least 4 visible seconds, and a "leave" strictly before the cut.
        if length >= 12 and rng.random() < cfg.event_prob:
            appear = int(rng.integers(2, length // 2))
        if length - appear >= 8 and rng.random() < cfg.event_prob:
            vanish = int(rng.integers(appear + 4, length - 1))
        out.append(Shape(
            colour=list(COLOURS)[colour], shape=SHAPES[shape], size=SIZES[int(rng.integers(2))],
            motion=MOTIONS[int(rng.integers(len(MOTIONS)))], cell=int(cell),
            period=float(rng.uniform(6.0, 10.0)), phase=float(rng.uniform(0, 2 * np.pi)),
            appear=appear, vanish=vanish))
    return out


def _revisit(source: Scene, start: int, end: int, source_id: int, rng: np.random.Generator) -> Scene:
    """Same background and shapes as `source`, events rescaled to the new length (so the caption matches)."""
    length = end - start
    shapes = []
    for s in source.shapes:
        appear = 0 if s.appear == 0 else max(1, round(s.appear * length / source.length))
        vanish = length if s.vanish == source.length else min(length - 1, round(s.vanish * length / source.length))
        if vanish - appear < 2:  # too short a scene to replay the events faithfully: keep the shape all along
            appear, vanish = 0, length
        shapes.append(Shape(**{**asdict(s), "appear": appear, "vanish": vanish,
                               "phase": float(rng.uniform(0, 2 * np.pi))}))
    return Scene(start, end, source.texture, source.tint, shapes, revisit_of=source_id)


# ----------------------------------------------------------------------------------------- annotations

def describe_shape(shape: Shape, scene_length: int) -> str:
    events = []
    if shape.appear > 0:
        events.append("appears later")
    if shape.vanish < scene_length:
        events.append("leaves early")
    text = f"a {shape.size} {shape.colour} {shape.shape} {shape.motion}"
    return text + (" and " + " and ".join(events) if events else "")


def caption(scene: Scene) -> str:
    """Background + every shape with its motion and events: distinctive enough to find the scene by."""
    parts = [describe_shape(s, scene.length) for s in sorted(scene.shapes, key=lambda s: s.cell)]
    return f"a {scene.background} background with " + ", ".join(parts) + "."


def visible_spans(video: Video, name: str) -> list[list[float]]:
    """Seconds [start, end) during which a shape called `name` ("green triangle") is on screen, merged."""
    spans = [[scene.start + s.appear, scene.start + s.vanish]
             for scene in video.scenes for s in scene.shapes if s.name == name]
    return _merge(spans)


def appear_spans(video: Video, name: str, span_seconds: int) -> list[list[float]]:
    spans = [[scene.start + s.appear, scene.start + min(s.appear + span_seconds, s.vanish)]
             for scene in video.scenes for s in scene.shapes if s.name == name]
    return _merge(spans)


def _merge(spans: list[list[int]]) -> list[list[float]]:
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], float(end))
        else:
            merged.append([float(start), float(end)])
    return merged


def annotate(video: Video, cfg: WorldConfig, rng: np.random.Generator) -> tuple[list, list, list, list]:
    """Segments, QA, streaming queries and the QA template names, all read off the true state."""
    captions = [caption(scene) for scene in video.scenes]
    segments = [{"start": float(scene.start), "end": float(scene.end), "caption": captions[i],
                 "related": [j for j, other in enumerate(captions) if other == captions[i]]}
                for i, scene in enumerate(video.scenes)]

    candidates = qa_candidates(video, cfg.objects[1])
    qa, templates = [], []
    seen: set[str] = set()
    for _ in range(cfg.qa_per_video):
        available = [t for t in cfg.qa_templates if any(c["question"] not in seen for c in candidates[t])]
        if not available:
            break
        template = available[int(rng.integers(len(available)))]
        pool = [c for c in candidates[template] if c["question"] not in seen]
        # Draw the answer first, uniformly, then a question with it: flattens answer priors (e.g. "one").
        answers = sorted({c["answer"] for c in pool})
        answer = answers[int(rng.integers(len(answers)))]
        pool = [c for c in pool if c["answer"] == answer]
        chosen = pool[int(rng.integers(len(pool)))]
        seen.add(chosen["question"])
        qa.append(_multiple_choice(chosen, rng))
        templates.append(template)

    names = sorted({s.name for scene in video.scenes for s in scene.shapes})
    queries = [(f"tell me when a {n} appears", appear_spans(video, n, cfg.appear_span_seconds)) for n in names]
    queries += [(f"tell me while a {n} is on screen", visible_spans(video, n)) for n in names]
    order = rng.permutation(len(queries))[:cfg.streaming_per_video]
    streaming = [{"query": queries[i][0], "spans": queries[i][1]} for i in sorted(order)]
    return segments, qa, streaming, templates


def _multiple_choice(candidate: dict, rng: np.random.Generator) -> dict:
    """Answer + 3 distractors (in-video ones first: they are the hard negatives), in a random order."""
    answer = candidate["answer"]
    excluded = {answer, *candidate.get("exclude", ())}
    near = [d for d in dict.fromkeys(candidate["near"]) if d not in excluded]
    far = [d for d in candidate["vocabulary"] if d not in excluded and d not in near]
    near = [near[i] for i in rng.permutation(len(near))]
    far = [far[i] for i in rng.permutation(len(far))]
    options = [answer] + (near + far)[:3]
    if len(options) != 4:
        raise AssertionError(f"template vocabulary too small for 4 options: {options}")
    options = [options[i] for i in rng.permutation(4)]
    return {"question": candidate["question"], "options": options, "answer": options.index(answer),
            "answer_text": answer, "segments": candidate["segments"]}


def qa_candidates(video: Video, max_objects: int) -> dict[str, list[dict]]:
    """Every question the state answers unambiguously, per template.

    Number options come from one fixed list per template (one..four, or up to `max_objects`), so an
    option's presence never gives the answer away.
    """
    scenes = video.scenes
    by_background: dict[str, list[int]] = {}
    by_name: dict[str, list[int]] = {}
    for i, scene in enumerate(scenes):
        by_background.setdefault(scene.background, []).append(i)
        for s in scene.shapes:
            by_name.setdefault(s.name, []).append(i)
    backgrounds = [f"the {b} background" for b in (f"{t} {c}" for t in TEXTURES for c in TINTS)]
    names = [f"a {c} {s}" for c in COLOURS for s in SHAPES]
    video_names = [f"a {n}" for n in by_name]
    out: dict[str, list[dict]] = {t: [] for t in QA_TEMPLATES}

    def shape_of(i: int, name: str) -> Shape:
        return next(s for s in scenes[i].shapes if s.name == name)

    for background, ids in by_background.items():
        # colour_on_background: the shape must exist, in one colour, in every scene with this background.
        for shape in SHAPES:
            colours = {s.colour for i in ids for s in scenes[i].shapes if s.shape == shape}
            present = all(any(s.shape == shape for s in scenes[i].shapes) for i in ids)
            if present and len(colours) == 1:
                out["colour_on_background"].append({
                    "question": f"What colour is the {shape} on the {background} background?",
                    "answer": colours.pop(), "near": [s.colour for i in ids for s in scenes[i].shapes],
                    "vocabulary": list(COLOURS), "segments": ids})
        counts = {len(scenes[i].shapes) for i in ids}
        if len(counts) == 1:
            count = counts.pop()
            out["count_on_background"].append({
                "question": f"How many shapes appear on the {background} background?",
                "answer": NUMBERS[count - 1], "near": [],
                "vocabulary": list(NUMBERS[:max(4, max_objects)]), "segments": ids})

    # No binding: a background shown anywhere against three never shown; the background of the last scene.
    for background, ids in by_background.items():
        out["background_in_video"].append({
            "question": "Which of these backgrounds appears in the video?", "answer": f"the {background} background",
            "near": [], "vocabulary": backgrounds, "exclude": [f"the {b} background" for b in by_background],
            "segments": ids})
    if scenes:
        out["background_at_end"].append({
            "question": "On which background does the video end?", "answer": f"the {scenes[-1].background} background",
            "near": [f"the {b} background" for b in by_background], "vocabulary": backgrounds,
            "segments": [len(scenes) - 1]})

    for name, ids in by_name.items():
        shapes = [shape_of(i, name) for i in ids]
        if len({s.motion for s in shapes}) == 1 and len(ids) <= 3:
            out["motion_of_object"].append({
                "question": f"How does the {name} move?", "answer": shapes[0].motion, "near": [],
                "vocabulary": list(MOTIONS), "segments": ids})
        if len({scenes[i].background for i in ids}) == 1:
            out["background_of_object"].append({
                "question": f"On which background does the {name} appear?",
                "answer": f"the {scenes[ids[0]].background} background",
                "near": [f"the {b} background" for b in by_background], "vocabulary": backgrounds, "segments": ids})
        if len(ids) <= 4:
            out["scenes_with_object"].append({
                "question": f"In how many scenes does a {name} appear?", "answer": NUMBERS[len(ids) - 1],
                "near": [], "vocabulary": list(NUMBERS[:4]), "segments": ids})
        # appears_after_leaves: the shape lives in one scene only, leaves mid-scene, and one shape enters after.
        if len(ids) != 1:
            continue
        scene, leaver = scenes[ids[0]], shapes[0]
        later = [s for s in scene.shapes if s.appear >= leaver.vanish]
        if leaver.vanish >= scene.length or not later:
            continue
        next_in = min(later, key=lambda s: s.appear)
        if sum(s.appear == next_in.appear for s in later) > 1:
            continue  # two shapes enter at once: no single answer
        out["appears_after_leaves"].append({
            "question": f"What appears after the {name} leaves?", "answer": f"a {next_in.name}",
            "near": [f"a {s.name}" for s in scene.shapes if s is not leaver] + video_names,
            "vocabulary": names, "exclude": [f"a {name}"], "segments": ids})
    return out
