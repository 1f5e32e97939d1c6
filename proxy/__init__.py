"""fedi-filter-proxy: keeps CSAM and unwanted NSFW media out of fediverse servers.

Public surface: :func:`load_config` / :class:`ConfigError`, :func:`build_app` (the ``serve`` app),
:class:`Pipeline` and :class:`Verdict`, :class:`MediaError` (media refused as undecodable or hostile).
"""

from .config import Config, ConfigError, load_config, parse_config
from .media import MediaError
from .pipeline import Pipeline, Verdict
from .server import build_app

__all__ = ["Config", "ConfigError", "MediaError", "Pipeline", "Verdict", "build_app", "load_config", "parse_config"]
