"""Media classification behind the :class:`Scorer` seam: signal sources (CLIP, detectors), dynamic batching, and the rules engine.

Exceptions: :class:`ClassifierNotReady` (loading or failed to load), :class:`Overloaded` (queue full),
:class:`SourceLoadError` (a model could not be loaded), :class:`RuleError` (a rules parse error, a
``ValueError`` with the path inside the policy).
"""

from .batcher import DynamicBatcher, Overloaded
from .engine import KNOWN_SOURCES, Classifier, ClassifierNotReady, ClassifierSettings, source_keys
from .scorer import Scorer
from .rules import CLIP_SOURCE, FrameResult, RuleError, Rules, Signal, parse_rules
from .sources import ClipSettings, SourceLoadError

__all__ = [
    "CLIP_SOURCE",
    "KNOWN_SOURCES",
    "Classifier",
    "ClassifierNotReady",
    "ClassifierSettings",
    "ClipSettings",
    "DynamicBatcher",
    "FrameResult",
    "Overloaded",
    "RuleError",
    "Rules",
    "Scorer",
    "Signal",
    "SourceLoadError",
    "parse_rules",
    "source_keys",
]
