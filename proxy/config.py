"""Configuration: YAML in, typed and validated objects out.

The whole config is built and checked before anything uses it; every error names its YAML path
(``instances[1].policy``) and what was expected. ``${VAR}`` and ``${VAR:-default}`` in string values are
replaced from the environment (for secrets); an unset ``${VAR}`` without default is an error.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from classifier import ClassifierSettings, ClipSettings, RuleError, Rules, parse_rules, source_keys

from .hashlists import HashList, parse_hash

ACTIONS = ("accept", "reject", "strip", "drop", "quarantine")
SEVERITY = {a: i for i, a in enumerate(("accept", "strip", "drop", "quarantine", "reject"))}
INBOX_ACTIONS = ("reject", "drop", "strip", "pass")
BACKEND_KINDS = ("lemmy", "pictrs", "mastodon", "misskey", "akkoma", "generic")
ENV_DEFAULT = "FEDI_FILTER_CONFIG"


class ConfigError(ValueError):
    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message


@dataclass(frozen=True)
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 8090
    admin_token: str = ""
    audit_db: str = "var/audit.sqlite3"
    max_body_bytes: int = 41_943_040
    cache_ttl_s: int = 86_400
    cache_size: int = 100_000
    known_pictrs_ids: tuple[str, ...] = ()
    decode_workers: int = 2


@dataclass(frozen=True)
class FetchConfig:
    allow_networks: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    max_bytes: int = 41_943_040
    timeout_ms: int = 5000
    max_redirects: int = 3
    max_urls: int = 16
    """Media URLs judged per inbox delivery (the first ones found); the rest are left to downstream checks."""


@dataclass(frozen=True)
class EgressConfig:
    host: str = "0.0.0.0"
    port: int = 8091
    instance: str | None = None
    """Whose policy judges the media the backend fetches (default: the first instance)."""
    confdir: str = "var/mitmproxy"
    """mitmproxy's directory: the interception CA (mitmproxy-ca-cert.pem) is created here."""
    ignore_hosts: tuple[str, ...] = ()
    max_bytes: int = 104_857_600
    max_concurrent: int = 64
    admin_host: str = "127.0.0.1"
    admin_port: int | None = 8092
    upstream_ca: str | None = None
    """A CA bundle to verify upstream TLS with, instead of the system's (private CAs, tests)."""


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = 41_943_040
    max_pixels: int = 50_000_000
    max_frames: int = 8
    """Unused: every distinct frame is judged now (see max_judged_frames, max_video_frames)."""
    max_total_frames: int = 10_000
    """An animation with more frames than this is refused as hostile."""
    max_video_frames: int = 256
    """Frames judged per video stream: one a second and scene changes for 2 minutes, then evenly spaced."""
    max_tiles: int = 16
    """Model-size tiles judged besides the whole view of a strip or a large image."""
    max_judged_frames: int = 512
    """Views judged for one file at most (frames, tiles, light/dark composites); more: too_many_frames."""
    decode_timeout_ms: int = 3000


@dataclass(frozen=True)
class Policy:
    name: str
    rules: Rules
    actions: Mapping[str, str]
    inbox: str = "strip"
    prefetch: bool = True
    """Inboxes: judge media before forwarding (True) or forward at once and judge in the background."""
    inbox_timeout_ms: int = 6000
    """How long a delivery waits for its media verdicts before it is forwarded anyway (the rest are judged
    in the background and denied downstream). Senders give up early: Lemmy after 9 s, backend included."""
    on_error: str = "reject"
    on_invalid: str = "reject"
    on_unsupported: str = "reject"
    """Files that are no image, video or audio we can decode (PDF, archives, SVG): not judged, so refused
    by default; Misskey's drive takes any file, so config/misskey.yaml accepts them."""
    timeout_ms: int = 8000
    reject_status: int = 406
    limits: MediaLimits = field(default_factory=MediaLimits)
    allow: HashList = field(default_factory=HashList)
    deny: HashList = field(default_factory=HashList)
    quarantine_dir: str | None = None

    def action_for(self, labels: frozenset[str] | set[str]) -> str:
        actions = [self.actions.get(label, "accept") for label in labels]
        return max(actions, key=SEVERITY.__getitem__, default="accept")


@dataclass(frozen=True)
class Instance:
    name: str
    kind: str
    upstream: str
    policy: Policy
    hosts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Config:
    server: ServerConfig
    classifier: ClassifierSettings
    fetch: FetchConfig
    policies: Mapping[str, Policy]
    instances: tuple[Instance, ...]
    egress: EgressConfig = field(default_factory=EgressConfig)
    source: str = "<memory>"

    def instance_named(self, name: str) -> Instance | None:
        return next((i for i in self.instances if i.name == name), None)

    def instance_claiming(self, host: str | None) -> Instance | None:
        """The instance whose ``hosts`` list ``host`` (port stripped): its traffic is reverse-proxied."""
        if host:
            bare = (host.rsplit(":", 1)[0] if not host.endswith("]") else host).lower()
            for inst in self.instances:
                if bare in inst.hosts:
                    return inst
        return None


# --- generic helpers -------------------------------------------------------------------------------

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
T = TypeVar("T")


def _expand_env(value: Any, path: str) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is not None:
                return default
            raise ConfigError(path, f"environment variable {name} is not set (write ${{{name}:-}} to allow empty)")

        return _ENV.sub(sub, value)
    if isinstance(value, Mapping):
        return {k: _expand_env(v, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand_env(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


class _Section:
    """A mapping at a YAML path; every read checks type, and unknown keys are refused."""

    def __init__(self, raw: Any, path: str) -> None:
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            raise ConfigError(path, f"expected a mapping, got {type(raw).__name__}")
        self.raw = raw
        self.path = path
        self._read: set[str] = set()

    def sub(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def get(self, key: str, kind: type[T] | tuple[type, ...], default: Any) -> Any:
        self._read.add(key)
        if key not in self.raw or self.raw[key] is None:
            return default
        value = self.raw[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
            names = " or ".join(k.__name__ for k in kinds)
            raise ConfigError(self.sub(key), f"expected {names}, got {type(value).__name__} {value!r}")
        return value

    def positive(self, key: str, default: int) -> int:
        value = self.get(key, int, default)
        if value <= 0:
            raise ConfigError(self.sub(key), f"expected a positive integer, got {value}")
        return int(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            raise ConfigError(self.sub(key), f"expected one of {list(choices)}, got {value!r}")
        return str(value)

    def section(self, key: str) -> _Section:
        self._read.add(key)
        return _Section(self.raw.get(key), self.sub(key))

    def raw_value(self, key: str) -> Any:
        self._read.add(key)
        return self.raw.get(key)

    def done(self) -> None:
        for key in self.raw:
            if key not in self._read:
                raise ConfigError(self.sub(str(key)), f"unknown key; expected one of {sorted(self._read)}")


def _str_list(value: Any, path: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(path, "expected a list of strings")
    return tuple(value)


def parse_listen(value: str, path: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ConfigError(path, f"expected 'host:port', got {value!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


# --- sections --------------------------------------------------------------------------------------


def _server(s: _Section) -> ServerConfig:
    host, port = parse_listen(s.get("listen", str, "0.0.0.0:8090"), s.sub("listen"))
    cfg = ServerConfig(
        host=host,
        port=port,
        admin_token=s.get("admin_token", str, ""),
        audit_db=s.get("audit_db", str, "var/audit.sqlite3"),
        max_body_bytes=s.positive("max_body_bytes", ServerConfig.max_body_bytes),
        cache_ttl_s=s.positive("cache_ttl_s", ServerConfig.cache_ttl_s),
        cache_size=s.positive("cache_size", ServerConfig.cache_size),
        known_pictrs_ids=_str_list(s.raw_value("known_pictrs_ids"), s.sub("known_pictrs_ids")),
        decode_workers=s.positive("decode_workers", ServerConfig.decode_workers),
    )
    s.done()
    return cfg


def _classifier(s: _Section) -> ClassifierSettings:
    device = s.get("device", str, "auto")
    if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", device):
        raise ConfigError(s.sub("device"), f"expected auto, cpu, cuda or cuda:N, got {device!r}")
    pretrained = s.get("pretrained", str, "openai")
    cfg = ClassifierSettings(
        clip=ClipSettings(
            model=s.get("model", str, "ViT-L-14"),
            pretrained=None if pretrained in ("", "random") else pretrained,
            device=device,
            seed=s.get("seed", int, 0),
        ),
        max_batch=s.positive("max_batch", 32),
        max_wait_ms=s.get("max_wait_ms", (int, float), 5.0),
        max_queue=s.positive("max_queue", 1024),
        preprocess_workers=s.positive("preprocess_workers", 2),
        detector_threads=s.get("detector_threads", int, 0),
    )
    s.done()
    return cfg


def _fetch(s: _Section) -> FetchConfig:
    nets = []
    for i, raw in enumerate(_str_list(s.raw_value("allow_networks"), s.sub("allow_networks"))):
        try:
            nets.append(ipaddress.ip_network(raw, strict=False))
        except ValueError as exc:
            raise ConfigError(f"{s.sub('allow_networks')}[{i}]", str(exc)) from None
    cfg = FetchConfig(
        allow_networks=tuple(nets),
        max_bytes=s.positive("max_bytes", FetchConfig.max_bytes),
        timeout_ms=s.positive("timeout_ms", FetchConfig.timeout_ms),
        max_redirects=s.get("max_redirects", int, FetchConfig.max_redirects),
        max_urls=s.positive("max_urls", FetchConfig.max_urls),
    )
    s.done()
    return cfg


def _egress(s: _Section) -> EgressConfig:
    d = EgressConfig()
    host, port = parse_listen(s.get("listen", str, f"{d.host}:{d.port}"), s.sub("listen"))
    admin = s.get("admin_listen", str, f"{d.admin_host}:{d.admin_port}")
    admin_host, admin_port = parse_listen(admin, s.sub("admin_listen")) if admin else (d.admin_host, None)
    patterns = _str_list(s.raw_value("ignore_hosts"), s.sub("ignore_hosts"))
    for i, pattern in enumerate(patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(f"{s.sub('ignore_hosts')}[{i}]", f"not a regular expression: {exc}") from None
    cfg = EgressConfig(
        host=host,
        port=port,
        instance=s.get("instance", str, None),
        confdir=s.get("confdir", str, d.confdir),
        ignore_hosts=patterns,
        max_bytes=s.positive("max_bytes", d.max_bytes),
        max_concurrent=s.positive("max_concurrent", d.max_concurrent),
        admin_host=admin_host,
        admin_port=admin_port,
        upstream_ca=s.get("upstream_ca", str, None),
    )
    s.done()
    return cfg


def _limits(s: _Section) -> MediaLimits:
    d = MediaLimits()
    cfg = MediaLimits(
        max_bytes=s.positive("max_bytes", d.max_bytes),
        max_pixels=s.positive("max_pixels", d.max_pixels),
        max_frames=s.positive("max_frames", d.max_frames),
        max_total_frames=s.positive("max_total_frames", d.max_total_frames),
        max_video_frames=s.positive("max_video_frames", d.max_video_frames),
        max_tiles=s.positive("max_tiles", d.max_tiles),
        max_judged_frames=s.positive("max_judged_frames", d.max_judged_frames),
        decode_timeout_ms=s.positive("decode_timeout_ms", d.decode_timeout_ms),
    )
    s.done()
    return cfg


def _hashlist(s: _Section, base: Path) -> HashList:
    entries: list[tuple[str, str]] = []
    for i, raw in enumerate(_str_list(s.raw_value("hashes"), s.sub("hashes"))):
        try:
            entries.append(parse_hash(raw))
        except ValueError as exc:
            raise ConfigError(f"{s.sub('hashes')}[{i}]", str(exc)) from None
    files = _str_list(s.raw_value("files"), s.sub("files"))
    for i, name in enumerate(files):
        path = (base / name) if not os.path.isabs(name) else Path(name)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"{s.sub('files')}[{i}]", f"cannot read hash list: {exc}") from None
        for lineno, line in enumerate(text.splitlines(), 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            try:
                entries.append(parse_hash(line.split()[0]))
            except ValueError as exc:
                raise ConfigError(f"{s.sub('files')}[{i}]", f"{path}:{lineno}: {exc}") from None
    s.done()
    return HashList.of(entries, files=tuple(str(f) for f in files))


def _policy(name: str, s: _Section, base: Path) -> Policy:
    try:
        rules = parse_rules(
            s.raw_value("concepts"), s.raw_value("labels"), s.raw_value("adjustments"), path=s.path
        )
    except RuleError as exc:
        raise ConfigError(exc.path, exc.message) from None
    for source, key in rules.signals():
        try:
            keys = source_keys(source)
        except KeyError:
            raise ConfigError(s.sub("concepts"), f"unknown signal source {source!r} in '{source}.{key}'") from None
        if keys is not None and key not in keys:
            raise ConfigError(s.sub("concepts"), f"{source!r} has no score {key!r}; known: {sorted(keys)}")
    actions_s = s.section("actions")
    actions: dict[str, str] = {}
    label_names = {r.name for r in rules.labels}
    for label in actions_s.raw:
        if label not in label_names:
            raise ConfigError(actions_s.sub(str(label)), f"no label {label!r} in this policy; labels: {sorted(label_names)}")
        actions[str(label)] = actions_s.choice(str(label), ACTIONS, "accept")
    actions_s.done()
    reject_status = s.get("reject_status", int, 406)
    if not 400 <= reject_status <= 599:
        raise ConfigError(s.sub("reject_status"), f"expected a 4xx or 5xx status, got {reject_status}")
    quarantine_dir = s.get("quarantine_dir", str, None)
    policy = Policy(
        name=name,
        rules=rules,
        actions=actions,
        inbox=s.choice("inbox", INBOX_ACTIONS, "strip"),
        prefetch=s.get("prefetch", bool, True),
        inbox_timeout_ms=s.positive("inbox_timeout_ms", 6000),
        on_error=s.choice("on_error", ("reject", "accept"), "reject"),
        on_invalid=s.choice("on_invalid", ("reject", "accept"), "reject"),
        on_unsupported=s.choice("on_unsupported", ("reject", "accept"), "reject"),
        timeout_ms=s.positive("timeout_ms", 8000),
        reject_status=reject_status,
        limits=_limits(s.section("limits")),
        allow=_hashlist(s.section("allow"), base),
        deny=_hashlist(s.section("deny"), base),
        quarantine_dir=quarantine_dir,
    )
    if "quarantine" in actions.values() and not quarantine_dir:
        raise ConfigError(s.sub("quarantine_dir"), "a 'quarantine' action needs quarantine_dir (where copies are kept)")
    s.done()
    return policy


def _instances(raw: Any, policies: Mapping[str, Policy]) -> tuple[Instance, ...]:
    if not isinstance(raw, list) or not raw:
        raise ConfigError("instances", "expected a non-empty list of instances")
    out: list[Instance] = []
    seen_names: set[str] = set()
    seen_hosts: dict[str, str] = {}
    for i, item in enumerate(raw):
        s = _Section(item, f"instances[{i}]")
        name = s.get("name", str, None)
        if not name:
            raise ConfigError(s.sub("name"), "required")
        if name in seen_names:
            raise ConfigError(s.sub("name"), f"duplicate instance name {name!r}")
        seen_names.add(name)
        policy_name = s.get("policy", str, None)
        if policy_name not in policies:
            raise ConfigError(s.sub("policy"), f"{policy_name!r} is not a policy; known: {sorted(policies)}")
        upstream = s.get("upstream", str, "")
        if upstream and not re.match(r"^https?://[^/]+", upstream):
            raise ConfigError(s.sub("upstream"), f"expected an http(s):// URL, got {upstream!r}")
        hosts = tuple(h.lower() for h in _str_list(s.raw_value("hosts"), s.sub("hosts")))
        if hosts and not upstream:
            raise ConfigError(s.sub("upstream"), "an instance with hosts is reverse-proxied and needs an upstream URL")
        for h in hosts:
            if h in seen_hosts:
                raise ConfigError(s.sub("hosts"), f"host {h!r} already belongs to instance {seen_hosts[h]!r}")
            seen_hosts[h] = name
        out.append(
            Instance(
                name=name,
                kind=s.choice("kind", BACKEND_KINDS, "generic"),
                upstream=upstream.rstrip("/"),
                policy=policies[policy_name],
                hosts=hosts,
            )
        )
        s.done()
    return tuple(out)


def parse_config(raw: Any, *, base: Path = Path("."), source: str = "<memory>") -> Config:
    raw = _expand_env(raw, "")
    top = _Section(raw, "")
    server = _server(top.section("server"))
    classifier = _classifier(top.section("classifier"))
    fetch = _fetch(top.section("fetch"))
    pol_s = top.section("policies")
    if not pol_s.raw:
        raise ConfigError("policies", "expected at least one policy")
    policies = {str(n): _policy(str(n), pol_s.section(str(n)), base) for n in pol_s.raw}
    pol_s.done()
    instances = _instances(top.raw_value("instances"), policies)
    egress = _egress(top.section("egress"))
    if egress.instance is not None and egress.instance not in {i.name for i in instances}:
        raise ConfigError("egress.instance", f"{egress.instance!r} is not an instance; known: {[i.name for i in instances]}")
    top.done()
    return Config(server, classifier, fetch, policies, instances, egress, source)


def _read_yaml(p: Path, seen: tuple[Path, ...] = ()) -> Any:
    """Read a config file, resolving ``extends: other.yaml``: the other file is the base and this file is
    merged over it (mappings key by key, at every depth; lists and scalars replace)."""
    if p.resolve() in seen:
        raise ConfigError("extends", f"{p} extends itself (cycle: {' -> '.join(map(str, seen))})")
    try:
        raw = yaml.safe_load(p.read_text())
    except OSError as exc:
        raise ConfigError("", f"cannot read {p}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError("", f"{p} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw
    parent_name = raw.pop("extends")
    if not isinstance(parent_name, str):
        raise ConfigError("extends", "expected the path of another config file")
    base = _read_yaml(p.parent / parent_name, (*seen, p.resolve()))
    if not isinstance(base, dict):
        raise ConfigError("extends", f"{parent_name} is not a config mapping")
    return _merge(base, raw)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | os.PathLike[str] | None = None) -> Config:
    """Load and validate a config file (``FEDI_FILTER_CONFIG`` when ``path`` is None)."""
    if path is None:
        path = os.environ.get(ENV_DEFAULT)
        if not path:
            raise ConfigError("", f"no config file: pass --config FILE or set {ENV_DEFAULT}")
    p = Path(path)
    return parse_config(_read_yaml(p), base=p.parent, source=str(p))
