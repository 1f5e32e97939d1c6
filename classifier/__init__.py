"""Media classification behind the :class:`Scorer` seam: signal sources (CLIP, detectors), dynamic batching, and the rules engine.

Exceptions: :class:`ClassifierNotReady` (loading or failed to load), :class:`Overloaded` (queue full),
:class:`SourceLoadError` (a model could not be loaded).
"""

from .batcher import DynamicBatcher, Overloaded
from .engine import KNOWN_SOURCES, Classifier, ClassifierNotReady, ClassifierSettings, source_keys
from .scorer import Scorer
from .rules import (
    CLIP_SOURCE,
    Adjustment,
    Concept,
    Condition,
    FrameResult,
    LabelRule,
    Rules,
    Signal,
    parse_signal,
    parse_threshold,
)
from .sources import ClipSettings, SourceLoadError

__all__ = [
    "CLIP_SOURCE",
    "KNOWN_SOURCES",
    "Adjustment",
    "Classifier",
    "ClassifierNotReady",
    "ClassifierSettings",
    "ClipSettings",
    "Concept",
    "Condition",
    "DynamicBatcher",
    "FrameResult",
    "LabelRule",
    "Overloaded",
    "Rules",
    "Scorer",
    "Signal",
    "SourceLoadError",
    "parse_signal",
    "parse_threshold",
    "source_keys",
]
