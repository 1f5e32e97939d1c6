"""Configuration: YAML in, typed and validated objects out.

Each key is one dataclass field below, with its default and a one-line doc; :mod:`proxy.schema` walks the
YAML into them, and every error names its YAML path (``instances[1].policy``) and what was expected.
``${VAR}`` and ``${VAR:-default}`` in string values are replaced from the environment (for secrets); an
unset ``${VAR}`` without default is an error. ``extends: other.yaml`` merges this file over another.
The whole config is built and checked before anything uses it.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

import yaml

from classifier import (
    Adjustment,
    ClassifierSettings,
    Concept,
    Condition,
    LabelRule,
    Rules,
    Signal,
    parse_signal,
    parse_threshold,
    source_keys,
)
from classifier.rules import CLIP_SOURCE

from . import backends
from .hashing import HashList, parse_hash
from .schema import ConfigError, Context, build, non_negative, option, positive
from .stores.base import EVERY_POLICY
from .verdict import Action, Fallback, InboxAction, ProblemKind

__all__ = [
    "Config", "ConfigError", "DetectorClass", "EgressConfig", "FetchConfig", "Instance", "Listen", "MediaLimits",
    "NativeApisConfig", "Policy", "ServerConfig", "WorkersConfig", "load_config", "parse_config",
]

ENV_DEFAULT = "FEDI_FILTER_CONFIG"

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class Listen:
    """A ``host:port`` to listen on."""

    host: str
    port: int

    @classmethod
    def parse(cls, value: Any, path: str = "", ctx: Context | None = None) -> Listen:
        if not isinstance(value, str):
            raise ValueError(f"expected 'host:port', got {value!r}")
        host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError(f"expected 'host:port', got {value!r}")
        return cls(host.strip("[]") or "0.0.0.0", int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


def _lower_hosts(value: Any, path: str, ctx: Context) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of host names")
    return tuple(v.strip().lower().strip("[]") for v in value)


def _optional_listen(value: Any, path: str, ctx: Context) -> Listen | None:
    return None if value == "" else Listen.parse(value)


def _networks(value: Any, path: str, ctx: Context) -> tuple[Network, ...]:
    if not isinstance(value, list):
        raise ValueError("expected a list of CIDRs")
    nets = []
    for i, raw in enumerate(value):
        try:
            nets.append(ipaddress.ip_network(str(raw), strict=False))
        except ValueError as exc:
            raise ConfigError(f"{path}[{i}]", str(exc)) from None
    return tuple(nets)


def _regexes(value: tuple[str, ...]) -> str | None:
    for pattern in value:
        try:
            re.compile(pattern)
        except re.error as exc:
            return f"{pattern!r} is not a regular expression: {exc}"
    return None


@dataclass(frozen=True)
class ServerConfig:
    listen: Listen = option(Listen("0.0.0.0", 8090), "host:port of `fedi-filter serve`", parse=Listen.parse)
    admin_token: str = option("", "Bearer token for POST /api/v1/scan; empty disables it")
    audit_db: str = option("var/audit.sqlite3", "SQLite file for one row per decision (no media bytes); \"\" disables")
    max_body_bytes: int = option(41_943_040, "larger request bodies get 413 without being read (40 MiB)", check=positive)
    cache_ttl_s: int = option(86_400, "how long a sha256 verdict is reused", check=positive)
    cache_size: int = option(100_000, "verdicts kept in memory (warmed from audit_db at start)", check=positive)
    known_pictrs_ids: tuple[str, ...] = option((), "pictrs-safety compatibility: ids allowed on /api/v1/scan/{id}; [] = any")
    decode_workers: int = option(2, "threads that hash and decode media beside the event loop", check=positive)
    max_inflight_bytes: int = option(268_435_456, "request bodies held at once for judging (256 MiB); past it a body "
                                     "waits within the policy timeout, then gets on_error", check=positive)
    body_timeout_ms: int = option(60_000, "a body held for judging must arrive within this (nginx buffers bodies, "
                                  "so slow senders wait there); past it: 408", check=positive)
    body_idle_ms: int = option(5_000, "a held body whose sender stalls this long is cut (408), freeing its share "
                               "of max_inflight_bytes", check=positive)
    api_hosts: tuple[str, ...] = option(("localhost", "127.0.0.1", "::1", "fedi-filter"),
                                        "Host names the API, /metrics and /admin/ answer on (others: 421); "
                                        "add the name backends and workers use; \"*\": every unclaimed host",
                                        parse=_lower_hosts)
    access_log: bool = option(False, "also access-log reverse-proxied requests (the API's own are always logged)")

    @property
    def host(self) -> str:
        return self.listen.host

    @property
    def port(self) -> int:
        return self.listen.port


@dataclass(frozen=True)
class FetchConfig:
    allow_networks: tuple[Network, ...] = option((), "CIDRs exempt from the private-address (SSRF) ban, e.g. a LAN peer",
                                                  parse=_networks)
    max_bytes: int = option(41_943_040, "larger responses are refused (too_large)", check=positive)
    timeout_ms: int = option(5000, "one fetch, redirects included", check=positive)
    max_redirects: int = option(3, "redirects followed, each target checked again", check=non_negative)
    max_urls: int = option(64, "media URLs an inbox delivery may carry (all judged at once); more: on_invalid",
                           check=positive)


@dataclass(frozen=True)
class EgressConfig:
    listen: Listen = option(Listen("0.0.0.0", 8091), "host:port of the outbound proxy", parse=Listen.parse)
    instance: str | None = option(None, "whose policy judges fetched media (default: the first instance)")
    confdir: str = option("var/mitmproxy", "the interception CA (mitmproxy-ca-cert.pem) and ca-bundle.pem live here")
    ignore_hosts: tuple[str, ...] = option((), "regexes of hosts passed through as plain tunnels, never judged",
                                           check=_regexes)
    max_bytes: int = option(104_857_600, "media responses are buffered up to this; larger ones are refused (502)",
                            check=positive)
    max_concurrent: int = option(64, "judgements at once; waiting longer than the policy's timeout_ms: on_error",
                                 check=positive)
    admin_listen: Listen | None = option(Listen("127.0.0.1", 8092), "/healthz and /metrics of the egress process; \"\" turns it off",
                                         parse=_optional_listen)
    upstream_ca: str | None = option(None, "a CA bundle to verify upstream TLS with instead of the system's")

    @property
    def host(self) -> str:
        return self.listen.host

    @property
    def port(self) -> int:
        return self.listen.port


class FrameEncoding(StrEnum):
    """How frames travel to a remote worker (lossless, so a worker scores exactly what a local model would)."""

    RAW = "raw"
    PNG = "png"
    WEBP = "webp"


def _token_list(value: tuple[str, ...]) -> str | None:
    if any(len(t) < 16 for t in value):
        return "every worker token needs 16 characters or more (e.g. `openssl rand -hex 32`)"
    if len(set(value)) != len(value):
        return "worker tokens must be distinct (one per worker, so each can be revoked alone)"
    return None


@dataclass(frozen=True)
class WorkersConfig:
    tokens: tuple[str, ...] = option((), "one secret per remote worker (from env vars: \"${FEDI_FILTER_WORKER_TOKEN}\"); "
                                     "[] = no worker may connect", check=_token_list)
    local: bool = option(True, "this process runs the models too (counts as one worker); false: only remote workers")
    encoding: FrameEncoding = option(FrameEncoding.WEBP, "frames on the wire, all lossless: webp (fewest bytes, ~4x less "
                                     "than raw), png, raw (no encoding work; for a LAN)")
    heartbeat_s: float = option(10.0, "websocket ping interval; a worker silent for twice this is dropped", check=positive)
    max_message_bytes: int = option(4_194_304, "largest message a worker may send (4 MiB); larger: disconnected",
                                    check=positive)
    fingerprints: Mapping[str, str] = option(factory=dict, doc="source -> weights fingerprint every worker must report "
                                             "(sha256:...); {} = the first model to load pins it")

    @property
    def enabled(self) -> bool:
        return bool(self.tokens) or not self.local


def _store_url(value: str | None) -> str | None:
    if not value or value.startswith(("postgresql://", "postgres://")):
        return None
    return f"expected null (SQLite audit_db) or a postgresql:// URL, got {value.split(':', 1)[0]!r}:..."


class DetectorClass(StrEnum):
    """The classes of Misskey's detector API (misskey-dev/sensitive-detector's bundled model)."""

    DRAWING = "Drawing"
    HENTAI = "Hentai"
    NEUTRAL = "Neutral"
    PORN = "Porn"
    SEXY = "Sexy"


def _unit_interval(value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"expected a number from 0 to 1, got {value}"


@dataclass(frozen=True)
class NativeApisConfig:
    detector_api_key: str = option("", "Bearer token POST /v1/detect-images requires (Misskey's "
                                   "sensitiveMediaDetectionApiKey); \"\" = none")
    detector_max_parts: int = option(10, "images per detect-images request (sensitive-detector's maxParts); more: 413",
                                     check=positive)
    refused_class: DetectorClass = option(DetectorClass.PORN, "detect-images: the class a refused image gets, with "
                                          "probability 1.0 (Porn: over Misskey's porn threshold 0.75)")
    sensitive_labels: tuple[str, ...] = option((), "labels that mark accepted media sensitive: sensitive_class for "
                                               "Misskey, sensitive_score for NsfwApiPolicy")
    sensitive_class: DetectorClass = option(DetectorClass.SEXY, "detect-images: the class (probability 1.0) of accepted "
                                            "media with a sensitive label (Sexy: sensitive, never porn)")
    sensitive_score: float = option(0.7, "nsfw_score of accepted media with a sensitive label (refused: 1.0, else 0.0)",
                                    check=_unit_interval)


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = option(41_943_040, "media over this is invalid (too_large)", check=positive)
    max_pixels: int = option(50_000_000, "width x height from the header; over it: too_many_pixels (bombs)", check=positive)
    max_total_frames: int = option(10_000, "animations with more frames are refused (too_many_frames)", check=positive)
    max_video_frames: int = option(256, "frames judged per video stream: one a second and scene changes for 2 "
                                   "minutes, then evenly spaced", check=positive)
    max_tiles: int = option(16, "model-size tiles judged besides the whole view of a strip or a large image",
                            check=positive)
    max_judged_frames: int = option(512, "views judged for one file at most (frames, tiles, light/dark "
                                    "composites); more: too_many_frames", check=positive)
    decode_timeout_ms: int = option(3000, "decoding budget; over it: timeout (invalid)", check=positive)


def _hash_file(base: Path, name: str, path: str) -> list[tuple[str, str]]:
    file = Path(name) if os.path.isabs(name) else base / name
    try:
        text = file.read_text()
    except OSError as exc:
        raise ConfigError(path, f"cannot read hash list: {exc}") from None
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            try:
                entries.append(parse_hash(line.split()[0]))
            except ValueError as exc:
                raise ConfigError(path, f"{file}:{lineno}: {exc}") from None
    return entries


@dataclass(frozen=True)
class HashListConfig:
    hashes: tuple[str, ...] = option((), "kind:value entries (sha256:<hex>, md5:<hex>, pdq:<64 hex>; bare hex is read "
                                     "as sha256/md5)")
    files: tuple[str, ...] = option((), "files with one hash per line (# comments), relative to the config file")

    @classmethod
    def from_config(cls, values: dict[str, Any], path: str, ctx: Context) -> HashList:
        entries = []
        for i, raw in enumerate(values["hashes"]):
            try:
                entries.append(parse_hash(raw))
            except ValueError as exc:
                raise ConfigError(f"{path}.hashes[{i}]", str(exc)) from None
        for i, name in enumerate(values["files"]):
            entries += _hash_file(ctx.base, name, f"{path}.files[{i}]")
        return HashList.of(entries, files=values["files"])


def _hash_list(value: Any, path: str, ctx: Context) -> HashList:
    return build(HashListConfig, value, path, ctx)  # type: ignore[return-value]


def _thresholds(value: Any, path: str, prompts: bool) -> dict[Signal, float]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {type(value).__name__}")
    out: dict[Signal, float] = {}
    for key, raw in value.items():
        try:
            sig = (CLIP_SOURCE, str(key)) if prompts else parse_signal(key)
            out[sig] = parse_threshold(raw)
        except ValueError as exc:
            raise ConfigError(f"{path}[{key!r}]", str(exc)) from None
    return out


def _prompt_thresholds(value: Any, path: str, ctx: Context) -> dict[Signal, float]:
    return _thresholds(value, path, prompts=True)


def _signal_thresholds(value: Any, path: str, ctx: Context) -> dict[Signal, float]:
    return _thresholds(value, path, prompts=False)


@dataclass(frozen=True)
class ConceptConfig:
    """A named set of signals: each one above its threshold is a hit, above its critical threshold two more."""

    prompts: Mapping[Signal, float] = option(factory=dict, doc="CLIP prompt -> cosine threshold (a hit above it)",
                                             parse=_prompt_thresholds)
    critical: Mapping[Signal, float] = option(factory=dict, doc="CLIP prompt -> threshold for two hits more",
                                              parse=_prompt_thresholds)
    signals: Mapping[Signal, float] = option(factory=dict, doc="detector score (source.key) -> threshold",
                                             parse=_signal_thresholds)
    critical_signals: Mapping[Signal, float] = option(factory=dict, doc="detector score -> threshold for two hits more",
                                                      parse=_signal_thresholds)

    @classmethod
    def from_config(cls, values: dict[str, Any], path: str, ctx: Context) -> ConceptConfig:
        if not any(values.values()):
            raise ConfigError(path, "a concept needs at least one prompt or signal")
        return cls(**values)


@dataclass(frozen=True)
class ConditionConfig:
    concept: str = option(doc="a concept of this policy")
    min_hits: int = option(1, "hits of that concept at least", check=positive)


@dataclass(frozen=True)
class LabelConfig:
    all: tuple[ConditionConfig, ...] | None = option(None, "conditions that must all hold")
    any: tuple[ConditionConfig, ...] | None = option(None, "conditions of which one must hold")

    @classmethod
    def from_config(cls, values: dict[str, Any], path: str, ctx: Context) -> LabelConfig:
        given = [k for k in ("all", "any") if values[k] is not None]
        if len(given) != 1:
            raise ConfigError(path, "expected exactly one of 'all' or 'any'")
        if not values[given[0]]:
            raise ConfigError(f"{path}.{given[0]}", "expected a non-empty list of conditions")
        return cls(**values)

    @property
    def mode(self) -> str:
        return "all" if self.all is not None else "any"

    @property
    def conditions(self) -> tuple[ConditionConfig, ...]:
        return self.all if self.all is not None else (self.any or ())


def _signal_name(value: Any, path: str, ctx: Context) -> Signal:
    return parse_signal(value)


def _threshold(value: Any, path: str, ctx: Context) -> float:
    return parse_threshold(value)


@dataclass(frozen=True, kw_only=True)
class WhenConfig:
    prompt: str | None = option(None, "a CLIP prompt")
    signal: Signal | None = option(None, "or a detector score (source.key)", parse=_signal_name)
    above: float = option(doc="the adjustment applies when that score is above this", parse=_threshold)

    @classmethod
    def from_config(cls, values: dict[str, Any], path: str, ctx: Context) -> WhenConfig:
        if (values["prompt"] is None) == (values["signal"] is None):
            raise ConfigError(path, "expected exactly one of 'prompt' or 'signal'")
        return cls(**values)

    @property
    def ref(self) -> Signal:
        return self.signal if self.signal is not None else (CLIP_SOURCE, str(self.prompt))


@dataclass(frozen=True)
class AdjustmentConfig:
    when: WhenConfig = option(doc="the control score")
    add: Mapping[Signal, float] = option(doc="CLIP prompt -> amount added to its score", parse=_prompt_thresholds)

    @classmethod
    def from_config(cls, values: dict[str, Any], path: str, ctx: Context) -> AdjustmentConfig:
        if not values["add"]:
            raise ConfigError(f"{path}.add", "expected at least one prompt to adjust")
        return cls(**values)


def _rules(concepts: Mapping[str, ConceptConfig], labels: Mapping[str, LabelConfig],
           adjustments: tuple[AdjustmentConfig, ...], path: str) -> Rules:
    for name, label in labels.items():
        for i, cond in enumerate(label.conditions):
            if cond.concept not in concepts:
                raise ConfigError(f"{path}.labels.{name}.{label.mode}[{i}].concept",
                                  f"{cond.concept!r} is not a concept of this policy; known: {sorted(concepts)}")
    return Rules(
        tuple(Concept(name, {**c.prompts, **c.signals}, {**c.critical, **c.critical_signals}) for name, c in concepts.items()),
        tuple(LabelRule(name, tuple(Condition(c.concept, c.min_hits) for c in label.conditions), label.mode)
              for name, label in labels.items()),
        tuple(Adjustment(a.when.ref, a.when.above, dict(a.add)) for a in adjustments),
    )
def _pdq_distance(value: int) -> str | None:
    return None if 0 <= value <= 128 else f"expected a Hamming distance from 0 to 128, got {value}"


def _reject_status(value: int) -> str | None:
    return None if 400 <= value <= 599 else f"expected a 4xx or 5xx status, got {value}"


@dataclass(frozen=True)
class Policy:
    concepts: Mapping[str, ConceptConfig] = option(factory=dict, doc="named sets of signals (CLIP prompts, detector "
                                                   "scores) with thresholds")
    labels: Mapping[str, LabelConfig] = option(factory=dict, doc="label -> all/any conditions on concept hit counts")
    adjustments: tuple[AdjustmentConfig, ...] = option((), "control words: when one signal is high, shift other scores")
    actions: Mapping[str, Action] = option(factory=dict, doc="label -> action; the most severe wins; unlisted: accept")
    inbox: InboxAction = option(InboxAction.STRIP, "what a flagged inbox delivery gets")
    on_error: Fallback = option(Fallback.REJECT, "classifier down, overloaded, too slow (reject = fail closed)")
    on_invalid: Fallback = option(Fallback.REJECT, "empty, corrupt, truncated, bombs, too slow to decode")
    on_unsupported: Fallback = option(Fallback.REJECT, "files that are no image, video or audio (PDF, zip, SVG)")
    prefetch: bool = option(True, "inboxes: judge media before forwarding (false: forward, judge after)")
    inbox_timeout_ms: int = option(6000, "a delivery waits this long for verdicts, then is forwarded (Lemmy: 9 s)",
                                   check=positive)
    timeout_ms: int = option(8000, "budget for one verdict; must fit the backend's own timeout", check=positive)
    reject_status: int = option(406, "HTTP status of a refusal on /api/v1/validate", check=_reject_status)
    quarantine_dir: str | None = option(None, "where quarantined copies are kept (required by a quarantine action)")
    limits: MediaLimits = option(factory=MediaLimits, doc="bounds on decoding untrusted media")
    allow: HashList = option(factory=HashList, doc="hashes always accepted (fixed false positives); beats the own bank",
                             parse=_hash_list)
    deny: HashList = option(factory=HashList, doc="hashes always refused; beats everything", parse=_hash_list)
    pdq_distance: int = option(31, "PDQ entries match frames within this Hamming distance (ThreatExchange's 31); "
                               "only hashes of quality >= 50 are matched", check=_pdq_distance)
    name: str = option("", internal=True)
    rules: Rules = option(factory=lambda: Rules((), ()), internal=True)

    @classmethod
    def from_config(cls, values: dict[str, Any], path: str, ctx: Context) -> Policy:
        rules = _rules(values["concepts"], values["labels"], values["adjustments"], path)
        for source, key in rules.signals():
            try:
                keys = source_keys(source)
            except KeyError:
                raise ConfigError(f"{path}.concepts", f"unknown signal source {source!r} in '{source}.{key}'") from None
            if keys is not None and key not in keys:
                raise ConfigError(f"{path}.concepts", f"{source!r} has no score {key!r}; known: {sorted(keys)}")
        label_names = {r.name for r in rules.labels}
        for label in values["actions"]:
            if label not in label_names:
                raise ConfigError(f"{path}.actions.{label}", f"no label {label!r} in this policy; labels: {sorted(label_names)}")
        if Action.QUARANTINE in values["actions"].values() and not values["quarantine_dir"]:
            raise ConfigError(f"{path}.quarantine_dir", "a 'quarantine' action needs quarantine_dir (where copies are kept)")
        return cls(**values, rules=rules)

    def action_for(self, labels: frozenset[str] | set[str]) -> Action:
        return Action.most_severe(self.actions.get(label, Action.ACCEPT) for label in labels)

    def fallback(self, kind: ProblemKind) -> Action:
        """The action when no judgement was possible for this reason: the one mapping of problems to the
        policy's ``on_error`` / ``on_invalid`` / ``on_unsupported`` (a blocked URL is always refused)."""
        key = kind.policy_key
        if key is None:
            return Action.REJECT
        return Fallback(getattr(self, key)).action


def _policies(value: Any, path: str, ctx: Context) -> dict[str, Policy]:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(path, "expected at least one policy")
    for name, raw in value.items():
        if str(name) == EVERY_POLICY:  # a URL denied for it is denied to every policy
            raise ConfigError(f"{path}.{name}", f"{EVERY_POLICY!r} is reserved (it means every policy); choose another name")
        ctx.policies[str(name)] = replace(build(Policy, raw, f"{path}.{name}", ctx), name=str(name))
    return dict(ctx.policies)


def _policy_ref(value: Any, path: str, ctx: Context) -> Policy:
    if value not in ctx.policies:
        raise ConfigError(path, f"{value!r} is not a policy; known: {sorted(ctx.policies)}")
    policy: Policy = ctx.policies[value]
    return policy


def _kind(value: str) -> str | None:
    return None if value in backends.KINDS else f"expected one of {sorted(backends.KINDS)}, got {value!r}"


def _upstream(value: str) -> str | None:
    return None if not value or re.match(r"^https?://[^/]+", value) else f"expected an http(s):// URL, got {value!r}"


@dataclass(frozen=True, kw_only=True)
class Instance:
    name: str = option(doc="a name for logs, metrics and ?instance=NAME")
    policy: Policy = option(doc="the policy (by name) that judges this instance's media", parse=_policy_ref)
    kind: str = option("generic", "lemmy | pictrs | mastodon | misskey | akkoma | gotosocial | pixelfed | generic",
                       check=_kind)
    hosts: tuple[str, ...] = option((), "Host headers reverse-proxied to upstream (empty: API only)")
    upstream: str = option("", "the backend's URL (required with hosts)", check=_upstream)

    @classmethod
    def from_config(cls, values: dict[str, Any], path: str, ctx: Context) -> Instance:
        if not values["name"]:
            raise ConfigError(f"{path}.name", "required")
        values["hosts"] = tuple(h.lower() for h in values["hosts"])
        if values["hosts"] and not values["upstream"]:
            raise ConfigError(f"{path}.upstream", "an instance with hosts is reverse-proxied and needs an upstream URL")
        values["upstream"] = values["upstream"].rstrip("/")
        return cls(**values)

    @property
    def backend(self) -> backends.BackendKind:
        return backends.KINDS[self.kind]


def _instances(value: Any, path: str, ctx: Context) -> tuple[Instance, ...]:
    if not isinstance(value, list) or not value:
        raise ConfigError(path, "expected a non-empty list of instances")
    out: list[Instance] = []
    hosts: dict[str, str] = {}
    for i, raw in enumerate(value):
        inst = build(Instance, raw, f"{path}[{i}]", ctx)
        if any(o.name == inst.name for o in out):
            raise ConfigError(f"{path}[{i}].name", f"duplicate instance name {inst.name!r}")
        for h in inst.hosts:
            if h in hosts:
                raise ConfigError(f"{path}[{i}].hosts", f"host {h!r} already belongs to instance {hosts[h]!r}")
            hosts[h] = inst.name
        out.append(inst)
    return tuple(out)


@dataclass(frozen=True, kw_only=True)
class Config:
    server: ServerConfig = option(factory=ServerConfig, doc="the serve process")
    classifier: ClassifierSettings = option(factory=ClassifierSettings, doc="models, batching")
    fetch: FetchConfig = option(factory=FetchConfig, doc="every fetch the proxy itself makes")
    policies: Mapping[str, Policy] = option(doc="name -> policy", parse=_policies)
    instances: tuple[Instance, ...] = option(doc="chosen by Host header (or ?instance=NAME); the first is the default",
                                             parse=_instances)
    egress: EgressConfig = option(factory=EgressConfig, doc="`fedi-filter egress`: the backend's outbound proxy")
    native_apis: NativeApisConfig = option(factory=NativeApisConfig, doc="the backends' own moderation APIs we answer "
                                           "(Misskey detector, NsfwApiPolicy)")
    workers: WorkersConfig = option(factory=WorkersConfig, doc="remote model workers that dial in (`fedi-filter worker`)")
    store: str | None = option(None, "null or \"\": SQLite (server.audit_db); postgresql://... : shared by replicas",
                               check=_store_url)
    source: str = option("<memory>", internal=True)

    @classmethod
    def from_config(cls, values: dict[str, Any], path: str, ctx: Context) -> Config:
        egress: EgressConfig = values["egress"]
        names = [i.name for i in values["instances"]]
        if egress.instance is not None and egress.instance not in names:
            raise ConfigError("egress.instance", f"{egress.instance!r} is not an instance; known: {names}")
        known = {r.name for p in values["policies"].values() for r in p.rules.labels}
        for i, label in enumerate(values["native_apis"].sensitive_labels):
            if label not in known:
                raise ConfigError(f"native_apis.sensitive_labels[{i}]", f"no policy has a label {label!r}; labels: {sorted(known)}")
        return cls(**values)

    def instance_named(self, name: str) -> Instance | None:
        return next((i for i in self.instances if i.name == name), None)

    def serves_api(self, host: str | None) -> bool:
        """Whether ``host`` (port stripped) may reach the API, /metrics and /admin/: ``server.api_hosts``
        lists them; ``*`` allows every host no instance claims."""
        hosts = self.server.api_hosts
        if "*" in hosts:
            return True
        bare = _bare_host(host or "")
        return bare in hosts

    def instance_claiming(self, host: str | None) -> Instance | None:
        """The instance whose ``hosts`` list ``host`` (port stripped): its traffic is reverse-proxied."""
        if host:
            bare = _bare_host(host)
            for inst in self.instances:
                if bare in inst.hosts:
                    return inst
        return None


def _bare_host(host: str) -> str:
    """A Host header without its port, lower case, IPv6 brackets dropped."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


# --- reading files ---------------------------------------------------------------------------------

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


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


def parse_config(raw: Any, *, base: Path = Path("."), source: str = "<memory>") -> Config:
    config = build(Config, _expand_env(raw, ""), "", Context(base=base))
    return replace(config, source=source)


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


def reference_fields() -> dict[str, type]:
    """The sections of the config and the dataclass that declares each (for docs and the reference test)."""
    return {"server": ServerConfig, "classifier": ClassifierSettings, "fetch": FetchConfig, "egress": EgressConfig,
            "native_apis": NativeApisConfig, "workers": WorkersConfig,
            "policies.*": Policy, "policies.*.limits": MediaLimits, "policies.*.allow": HashListConfig,
            "policies.*.deny": HashListConfig, "instances[]": Instance, "policies.*.concepts.*": ConceptConfig,
            "policies.*.labels.*": LabelConfig, "policies.*.labels.*.all[]": ConditionConfig,
            "policies.*.adjustments[]": AdjustmentConfig, "policies.*.adjustments[].when": WhenConfig}

