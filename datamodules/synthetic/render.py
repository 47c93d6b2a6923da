"""Vectorised numpy rendering of a video's true state into uint8 frames at 1 FPS.

Each scene is rendered in one go: a static textured background broadcast over its T frames, then
per shape a (T, H, W) mask from the shape's signed geometry around its per-second centre. Cost is
O(T * H * W * shapes) with no Python loop over frames, so an hour of 64 px video renders in ~1 s.
"""
from __future__ import annotations

import numpy as np

from .world import COLOURS, TINTS, Scene, Shape, Video, WorldConfig, grid_side

SPECK = (150, 150, 150)  # distractor specks: grey, drawn under the shapes


def render_video(video: Video, cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """-> uint8 (duration, size, size, 3). `rng` drives only the unannotated parts (specks, noise)."""
    frames = np.empty((video.duration, cfg.size, cfg.size, 3), dtype=np.uint8)
    for scene in video.scenes:
        frames[scene.start:scene.end] = render_scene(scene, cfg, rng)
    return frames


def render_scene(scene: Scene, cfg: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    size, length = cfg.size, scene.length
    canvas = np.broadcast_to(background(scene.texture, scene.tint, size), (length, size, size, 3)).copy()
    coords = np.arange(size, dtype=np.float32) + 0.5  # pixel centres
    ys, xs = coords[None, :, None], coords[None, None, :]
    if cfg.distractors:
        _draw_specks(canvas, cfg.distractors, rng)
    cell = size / grid_side(cfg)
    for shape in scene.shapes:
        cx, cy = shape_centres(shape, cell, grid_side(cfg), length)
        radius = cell * (0.36 if shape.size == "big" else 0.22)
        mask = shape_mask(shape.shape, xs - cx[:, None, None], ys - cy[:, None, None], radius)
        mask[:shape.appear] = False
        mask[shape.vanish:] = False
        canvas[mask] = COLOURS[shape.colour]
    if cfg.noise > 0:
        noisy = canvas.astype(np.float32) + rng.normal(0.0, cfg.noise, canvas.shape).astype(np.float32)
        canvas = np.clip(noisy, 0, 255).astype(np.uint8)
    return canvas


def background(texture: str, tint: str, size: int) -> np.ndarray:
    """-> uint8 (size, size, 3): two tones of the tint laid out by the texture."""
    base = np.array(TINTS[tint], dtype=np.float32)
    light, dark = np.clip(base * 1.5 + 20, 0, 255), base * 0.55
    y, x = np.mgrid[0:size, 0:size]
    period = max(4, size // 8)
    if texture == "plain":
        weight = np.zeros((size, size))
    elif texture == "striped":
        weight = ((y // period) % 2).astype(np.float32)
    elif texture == "checkered":
        weight = (((y // period) + (x // period)) % 2).astype(np.float32)
    elif texture == "dotted":
        weight = (((y % period) - period / 2) ** 2 + ((x % period) - period / 2) ** 2 <= (period / 4) ** 2)
        weight = weight.astype(np.float32)
    elif texture == "gradient":
        weight = y / (size - 1)
    else:
        raise ValueError(f"unknown texture {texture!r}")
    image = dark[None, None] * (1 - weight[..., None]) + light[None, None] * weight[..., None]
    if texture == "plain":
        image = np.broadcast_to(base, (size, size, 3))
    return np.round(image).astype(np.uint8)


def shape_centres(shape: Shape, cell: float, side: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """Centre (x, y) in pixels for each second of the scene: (T,), (T,). Motion stays inside the cell."""
    t = np.arange(length, dtype=np.float32)
    home_x = (shape.cell % side + 0.5) * cell
    home_y = (shape.cell // side + 0.5) * cell
    amplitude = 0.16 * cell
    angle = 2 * np.pi * t / shape.period + shape.phase
    wave = np.sin(angle)
    still = np.zeros_like(t)
    dx, dy = {
        "stays still": (still, still),
        "moves side to side": (amplitude * wave, still),
        "moves up and down": (still, amplitude * wave),
        "moves in circles": (amplitude * np.cos(angle), amplitude * wave),
        "moves diagonally": (amplitude * wave, amplitude * wave),
    }[shape.motion]
    return home_x + dx, home_y + dy


def shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray, radius: float) -> np.ndarray:
    """Boolean mask from offsets to the centre; shapes of one radius have similar areas."""
    ax, ay = np.abs(dx), np.abs(dy)
    if shape == "circle":
        return dx * dx + dy * dy <= radius * radius
    if shape == "square":
        return np.maximum(ax, ay) <= 0.85 * radius
    if shape == "diamond":
        return ax + ay <= 1.2 * radius
    if shape == "triangle":  # apex up, base at 0.75 r below the centre
        return (dy >= -radius) & (dy <= 0.75 * radius) & (ax <= (dy + radius) / 1.75)
    if shape == "cross":
        arm = 0.35 * radius
        return ((ax <= arm) & (ay <= radius)) | ((ay <= arm) & (ax <= radius))
    raise ValueError(f"unknown shape {shape!r}")


def _draw_specks(canvas: np.ndarray, count: int, rng: np.random.Generator) -> None:
    """Grey 2x2 specks on a random walk: motion the annotations never mention."""
    length, size = canvas.shape[:2]
    steps = rng.integers(-2, 3, size=(length, count, 2))
    start = rng.integers(0, size - 2, size=(1, count, 2))
    pos = np.cumsum(steps, axis=0) + start
    period = 2 * (size - 2)
    pos = np.abs((pos % period + period) % period)
    pos = np.where(pos > size - 2, period - pos, pos)  # reflect at the borders
    t = np.arange(length)[:, None]
    for oy in range(2):
        for ox in range(2):
            canvas[t, pos[..., 1] + oy, pos[..., 0] + ox] = SPECK


def frame_features(frames: np.ndarray, grid: int = 16) -> np.ndarray:
    """Cheap deterministic per-frame features: (T, grid*grid*3) float16 average-pooled RGB in [0, 1].

    16x16 keeps a big shape ~3 cells wide, enough to tell shapes apart without a vision encoder.
    """
    length, size = frames.shape[:2]
    if size % grid:
        raise ValueError(f"frame size {size} is not a multiple of the feature grid {grid}")
    block = size // grid
    pooled = frames.reshape(length, grid, block, grid, block, 3).astype(np.float32).mean(axis=(2, 4))
    return (pooled.reshape(length, -1) / 255.0).astype(np.float16)
