"""fedi-filter-proxy: keeps CSAM and unwanted NSFW media out of fediverse servers.

Public surface: :func:`load_config` / :class:`ConfigError`, :func:`build_services` (what every command
runs on) and :func:`build_app` (the ``serve`` app), :class:`Pipeline`, :class:`Verdict` and its typed
meanings (:mod:`proxy.verdict`), :class:`MediaError` (media refused as undecodable or hostile).

Exceptions, one tree per concern:

- ``ValueError``
  - :class:`ConfigError`: a config that cannot be used; ``path`` names the YAML key.
  - :class:`proxy.multipart.MultipartError`: a body we refuse to parse (answered 400, never forwarded).
- ``Exception``
  - :class:`MediaError`: media refused as undecodable or hostile (``kind``: an ``InvalidKind``).
  - :class:`proxy.fetch.FetchError`: a URL we could not fetch (``kind``: a ``FetchErrorKind``).
- ``RuntimeError``
  - ``classifier.ClassifierNotReady``, ``classifier.Overloaded``: no score now (``on_error`` applies).
"""

from .app import Services, build_services
from .config import Config, load_config, parse_config
from .media import MediaError
from .pipeline import Pipeline
from .schema import ConfigError
from .server import build_app
from .verdict import Action, DecidedBy, Verdict

__all__ = [
    "Action", "Config", "ConfigError", "DecidedBy", "MediaError", "Pipeline", "Services", "Verdict", "build_app",
    "build_services", "load_config", "parse_config",
]
