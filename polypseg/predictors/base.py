"""The predictor interface: `prepare(image)` once, then `segment(prepared, prompt)` per prompt."""

from __future__ import annotations

import functools
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from polypseg.cache import EmbeddingCache
from polypseg.environment import Environment
from polypseg.images import as_rgb, image_digest
from polypseg.prompts import Prompt

# 1 GiB holds about 25 SAM2 embeddings at 1024 px: a few annotators' recent images.
DEFAULT_CACHE_BYTES = 1 << 30


def cache_size(env: Environment) -> int:
    """POLYPSEG_CACHE_BYTES, else 1 GiB."""
    return env.integer("POLYPSEG_CACHE_BYTES", DEFAULT_CACHE_BYTES)


@functools.cache
def default_cache_bytes() -> int:
    """The process's default, read at first use (servers pass their own, read at start)."""
    return cache_size(Environment())


@dataclass(frozen=True)
class PreparedImage:
    """An image and whatever the model computed from it before any prompt."""

    image: np.ndarray
    digest: str
    features: Any = None
    nbytes: int = 0

    @property
    def width(self) -> int:
        return int(self.image.shape[1])

    @property
    def height(self) -> int:
        return int(self.image.shape[0])


@dataclass(frozen=True)
class Prediction:
    mask: np.ndarray  # bool, the image's height x width
    score: float  # the model's confidence in the mask, 0..1
    # Is there a polyp in the prompted place at all (0..1)? None for models without that output.
    presence: float | None = None


class ImagePredictor(ABC):
    """A prompted segmenter. Subclasses set `name` and `version` and implement `_encode`
    (the prompt-free, cacheable part) and `_segment`."""

    name: str
    version: str
    metadata: dict[str, Any]
    # False for models that see the prompt from their first layer: nothing to cache then.
    has_prompt_free_part = True

    def __init__(self, cache_bytes: int | None = None) -> None:
        self.cache: EmbeddingCache[PreparedImage] = EmbeddingCache(
            default_cache_bytes() if cache_bytes is None else cache_bytes, lambda p: p.nbytes + p.image.nbytes
        )
        self.encoder_runs = 0

    def prepare(self, image: np.ndarray) -> PreparedImage:
        """Run (or fetch from the cache) the expensive, prompt-free part for an RGB image."""
        image = as_rgb(image)
        if not self.has_prompt_free_part:
            return PreparedImage(image, digest="")
        digest = image_digest(image)
        return self.cache.get_or_compute((self.version, digest), lambda: self._prepare(image, digest))

    def _prepare(self, image: np.ndarray, digest: str) -> PreparedImage:
        self.encoder_runs += 1
        features, nbytes = self._encode(image)
        return PreparedImage(image, digest, features, nbytes)

    def segment(self, prepared: PreparedImage, prompt: Prompt) -> Prediction:
        """The mask for one prompt (pixel units of the prepared image)."""
        return self._segment(prepared, prompt.fitted_to(prepared.width, prepared.height))

    def predict(self, image: np.ndarray, prompt: Prompt) -> Prediction:
        return self.segment(self.prepare(image), prompt)

    def segmenter(self) -> Callable[[np.ndarray, Prompt], np.ndarray]:
        """(image, prompt) -> mask, as evaluation takes a model."""
        return lambda image, prompt: self.predict(image, prompt).mask

    @abstractmethod
    def _encode(self, image: np.ndarray) -> tuple[Any, int]:
        """Features of the image and their size in bytes."""

    @abstractmethod
    def _segment(self, prepared: PreparedImage, prompt: Prompt) -> Prediction:
        """The mask for a prompt already checked against the image."""
