"""`sort-of-clevr`: 75x75 pictures of six coloured squares and circles, with text questions about them.

Sort-of-CLEVR (Santoro et al., 2017, "A simple neural network module for relational reasoning") is the small
benchmark for relational visual reasoning. Every image holds six objects of six distinct colours, each a square
or a circle, none overlapping. Each image comes with questions of two kinds:

* non-relational, about one object: "What shape is red?", "Is red on the left?", "Is red on top?" (its
  centre in the left / top half);
* relational, about the object's relation to the others: "Shape of the one closest to red?", "Shape of the one
  furthest from red?", "How many share the shape of red?" (itself included).

Answers come from a fixed set of ten words (`ANSWERS`). Distances are between object centres; an image in which
some object's closest or furthest neighbour would be a tie is redrawn, so every answer is unambiguous.

The images are uint8 arrays (N, 75, 75, 3). An example's ``meta["image"]`` is the row of its image in
`SortOfClevr.images(split)`. Generation is deterministic from the seed and takes a few seconds; the result is
written once to a cache file (``$RMT_CACHE_DIR`` or ``~/.cache/rmt``, keyed by every setting that changes it) and
read back on later runs. Nothing is written into the repository.

The task brings its own image encoder (`rmt.tasks.image_encoder`): a model for it carries
``[model.encoders.image] type = "image-patches"``, and each batch's images come as an `ImageBank`.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

from typing import Callable

import numpy as np
import torch

from rmt.model import ConfigError, RMTConfig
from rmt.model.encoders import encoder_settings
from rmt.tasks.base import Example, Task, histogram
from rmt.tasks.image_encoder import ImageBank, PatchEncoder

COLORS: tuple[str, ...] = ("red", "green", "blue", "orange", "gray", "yellow")
RGB: tuple[tuple[int, int, int], ...] = ((255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 156, 0), (128, 128, 128),
                                         (255, 255, 0))
SHAPES: tuple[str, ...] = ("square", "circle")
ANSWERS: tuple[str, ...] = ("yes", "no", "square", "circle", "1", "2", "3", "4", "5", "6")
BACKGROUND = 255  # white, as in the original generator

# Question subtypes, in order: (name, kind, template). {c} is the colour word (the object of that colour).
# Short on purpose: the model reads bytes, and every byte of a question costs a step of every layer.
QUESTIONS: tuple[tuple[str, str, str], ...] = (
    ("shape", "non_relational", "What shape is {c}?"),
    ("left", "non_relational", "Is {c} on the left?"),
    ("top", "non_relational", "Is {c} on top?"),
    ("closest", "relational", "Shape of the one closest to {c}?"),
    ("furthest", "relational", "Shape of the one furthest from {c}?"),
    ("count", "relational", "How many share the shape of {c}?"),
)
NON_RELATIONAL = tuple(i for i, q in enumerate(QUESTIONS) if q[1] == "non_relational")
RELATIONAL = tuple(i for i, q in enumerate(QUESTIONS) if q[1] == "relational")

CACHE_ENV = "RMT_CACHE_DIR"
CACHE_VERSION = 1  # bump when the generator's output changes, so stale cache files are never read


def cache_dir() -> Path:
    """Where generated data is cached: ``$RMT_CACHE_DIR`` if set, else ``~/.cache/rmt``."""
    override = os.environ.get(CACHE_ENV)
    return Path(override) if override else Path.home() / ".cache" / "rmt"


@dataclass(frozen=True)
class SortOfClevrConfig:
    n_train: int = 9_800  # images
    n_validation: int = 100
    n_test: int = 200
    non_relational_per_image: int = 10
    relational_per_image: int = 10
    image_size: int = 75
    object_size: int = 10  # side of a square and diameter of a circle, in pixels
    seed: int = 0
    cache: bool = True  # False: generate in memory only (tests)

    def __post_init__(self) -> None:
        for name in ("n_train", "n_validation", "n_test", "non_relational_per_image", "relational_per_image"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: expected >= 0, got {getattr(self, name)}")
        if self.object_size < 3:
            raise ValueError(f"object_size: expected >= 3, got {self.object_size}")
        # Six objects must fit without overlap: a grid of 3 x 3 cells of (object_size + 1) always does.
        if self.image_size < 3 * (self.object_size + 2):
            raise ValueError(f"image_size: expected >= 3 * (object_size + 2) = {3 * (self.object_size + 2)} so six "
                             f"objects fit without overlap, got {self.image_size}")


@dataclass
class Scenes:
    """One split's generated data, as arrays.

    images (N, S, S, 3) uint8; objects (N, 6, 3) int16 rows (x, y, shape index) per colour index, x and y the
    top-left pixel of the object's box; questions (Q, 4) int32 rows (image, colour, subtype, answer index).
    """

    images: np.ndarray
    objects: np.ndarray
    questions: np.ndarray


def stamps(object_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean pixel masks (object_size, object_size) of a square and of the circle inscribed in it."""
    square = np.ones((object_size, object_size), dtype=bool)
    centre = (object_size - 1) / 2
    yy, xx = np.mgrid[:object_size, :object_size]
    circle = (yy - centre) ** 2 + (xx - centre) ** 2 <= (object_size / 2) ** 2
    return square, circle


def centres(objects: np.ndarray, object_size: int) -> np.ndarray:
    """Objects (..., 6, 3) -> centres (..., 6, 2) float (x, y) in pixels."""
    return objects[..., :2].astype(np.float64) + (object_size - 1) / 2


def answer(objects: np.ndarray, colour: int, subtype: int, image_size: int, object_size: int) -> str:
    """The answer word to question `subtype` about colour `colour` of one image's objects (6, 3)."""
    name = QUESTIONS[subtype][0]
    shapes = objects[:, 2]
    c = centres(objects, object_size)
    if name == "shape":
        return SHAPES[shapes[colour]]
    if name == "left":
        return "yes" if c[colour, 0] < image_size / 2 else "no"
    if name == "top":
        return "yes" if c[colour, 1] < image_size / 2 else "no"
    if name == "count":
        return str(int((shapes == shapes[colour]).sum()))
    d = ((c - c[colour]) ** 2).sum(-1)
    if name == "closest":
        d[colour] = np.inf
        return SHAPES[shapes[int(d.argmin())]]
    d[colour] = -np.inf
    return SHAPES[shapes[int(d.argmax())]]


def _unambiguous(objects: np.ndarray, object_size: int) -> bool:
    """True when every object's closest and furthest other object is unique (no distance ties)."""
    c = centres(objects, object_size)
    d = ((c[:, None] - c[None]) ** 2).sum(-1)
    for i in range(len(objects)):
        others = np.delete(d[i], i)
        if (others == others.min()).sum() > 1 or (others == others.max()).sum() > 1:
            return False
    return True


def generate(n_images: int, config: SortOfClevrConfig, stream: str) -> Scenes:
    """`n_images` scenes and their questions, deterministic from (config.seed, stream)."""
    size, obj = config.image_size, config.object_size
    digest = hashlib.sha256(f"{config.seed}/{stream}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "little"))
    square, circle = stamps(obj)
    images = np.full((n_images, size, size, 3), BACKGROUND, dtype=np.uint8)
    objects = np.zeros((n_images, len(COLORS), 3), dtype=np.int16)
    # A gap of at least one pixel between the boxes (Chebyshev distance of top-left corners > object_size)
    # guarantees the shapes never touch, circles included (each lies inside its box).
    min_gap = obj + 1
    for n in range(n_images):
        while True:
            placed: list[tuple[int, int]] = []
            while len(placed) < len(COLORS):
                x, y = (int(v) for v in rng.integers(0, size - obj + 1, size=2))
                if all(max(abs(x - px), abs(y - py)) >= min_gap for px, py in placed):
                    placed.append((x, y))
            shapes = rng.integers(0, len(SHAPES), size=len(COLORS))
            candidate = np.array([(x, y, s) for (x, y), s in zip(placed, shapes)], dtype=np.int16)
            if _unambiguous(candidate, obj):
                break
        objects[n] = candidate
        for colour, (x, y, s) in enumerate(candidate):
            mask = square if s == 0 else circle
            images[n, y:y + obj, x:x + obj][mask] = RGB[colour]
    rows = []
    for n in range(n_images):
        for kinds, count in ((NON_RELATIONAL, config.non_relational_per_image),
                             (RELATIONAL, config.relational_per_image)):
            colours = rng.integers(0, len(COLORS), size=count)
            subtypes = rng.choice(np.array(kinds), size=count)
            for colour, subtype in zip(colours, subtypes):
                word = answer(objects[n], int(colour), int(subtype), size, obj)
                rows.append((n, int(colour), int(subtype), ANSWERS.index(word)))
    questions = np.array(rows, dtype=np.int32).reshape(-1, 4)
    return Scenes(images, objects, questions)


def question_example(scenes: Scenes, row: int) -> Example:
    """Question `row` of a split as a "qa" Example: prompt "Q: ... A:", target " <answer>"."""
    image, colour, subtype, answer_index = (int(v) for v in scenes.questions[row])
    name, kind, template = QUESTIONS[subtype]
    return Example(prompt=f"Q: {template.format(c=COLORS[colour])} A:", target=f" {ANSWERS[answer_index]}",
                   kind="qa", meta={"image": image, "type": kind, "question": name, "color": COLORS[colour],
                                    # reasoning steps, for the curriculum's step filters: find the object (1),
                                    # then relate it to the others (2)
                                    "steps": 1 if kind == "non_relational" else 2})


class SortOfClevr(Task):
    name = "sort-of-clevr"
    Config = SortOfClevrConfig

    def cache_path(self) -> Path:
        """The cache file for this config (every field that changes the data is in its name)."""
        settings = {k: v for k, v in asdict(self.config).items() if k != "cache"}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
        return cache_dir() / "sort_of_clevr" / f"v{CACHE_VERSION}-seed{self.config.seed}-{key}.npz"

    @functools.cached_property
    def scenes(self) -> dict[str, Scenes]:
        """split -> Scenes, read from the cache file when it exists, else generated (and cached)."""
        c = self.config
        path = self.cache_path()
        if c.cache and path.is_file():
            with np.load(path) as data:
                return {split: Scenes(data[f"{split}/images"], data[f"{split}/objects"], data[f"{split}/questions"])
                        for split in ("train", "validation", "test")}
        # Independent streams per split: a larger training set leaves the test images unchanged.
        scenes = {"train": generate(c.n_train, c, "train"), "validation": generate(c.n_validation, c, "validation"),
                  "test": generate(c.n_test, c, "test")}
        if c.cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp.npz")
            arrays = {f"{split}/{field}": getattr(s, field) for split, s in scenes.items()
                      for field in ("images", "objects", "questions")}
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, path)  # atomic: a concurrent reader never sees half a file
        return scenes

    def images(self, split: str) -> np.ndarray:
        """(N, S, S, 3) uint8 images of `split`; an example's meta["image"] indexes the first axis."""
        self.split(split)  # validates the split name
        return self.scenes[split].images

    def bank_source(self, split: str, tokenizer=None) -> Callable[[list[Example]], ImageBank]:
        """Examples -> their images as an `ImageBank` (each question is answered with its image in the bank)."""
        images = self.images(split)
        return lambda examples: ImageBank(torch.from_numpy(images[[ex.meta["image"] for ex in examples]]))

    def check_model(self, config: RMTConfig) -> None:
        spec = config.encoders.get("image")
        if spec is None:
            raise ConfigError(f"tasks.{self.name}: its examples come with images; the model needs an image "
                              '[model.encoders.image] with type = "image-patches"')
        cls, settings = encoder_settings("image", spec)
        if not issubclass(cls, PatchEncoder):
            raise ConfigError(f"tasks.{self.name}: model.encoders.image.type: expected an image encoder "
                              f'("image-patches"), got {spec["type"]!r}')
        if settings.hop:
            b, r = config.bank, config.reader
            if not r.core_reads or r.core_keys:
                raise ConfigError(f"tasks.{self.name}: model.encoders.image.hop scores the thinking core's re-reads "
                                  "of the picture: it needs model.reader.core_reads = true and core_keys = false")
            if b.read != "softmax" or (settings.hop_heads, settings.hop_query) != (b.heads, b.d_key):
                raise ConfigError(f"tasks.{self.name}: model.encoders.image.hop_heads / hop_query must equal "
                                  f"model.bank.heads / d_key of a softmax bank: got {settings.hop_heads} / "
                                  f"{settings.hop_query} for a {b.read!r} bank of {b.heads} / {b.d_key}")
        if settings.image_size != self.config.image_size:
            raise ConfigError(f"tasks.{self.name}: images are {self.config.image_size} pixels wide but "
                              f"model.encoders.image.image_size is {settings.image_size}")

    def _build_splits(self) -> dict[str, list[Example]]:
        return {split: [question_example(s, row) for row in range(len(s.questions))]
                for split, s in self.scenes.items()}

    def meta_stats(self, examples: list[Example]) -> dict[str, dict[str, int]]:
        stats = {"question type": histogram(e.meta["type"] for e in examples),
                 "question": histogram(e.meta["question"] for e in examples),
                 "color": histogram(e.meta["color"] for e in examples)}
        for kind in ("non_relational", "relational"):
            stats[f"answers ({kind})"] = histogram(e.target.strip() for e in examples if e.meta["type"] == kind)
        for name, _, _ in QUESTIONS:
            stats[f"answers ({name})"] = histogram(e.target.strip() for e in examples if e.meta["question"] == name)
        return stats
