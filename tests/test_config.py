import copy
from pathlib import Path

import pytest

from proxy.config import ConfigError, load_config, parse_config
from tests.support.configs import config_dict, policy

ROOT = Path(__file__).resolve().parent.parent


SHIPPED = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "config").glob("*.yaml")) + ["examples/config.reference.yaml"]


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_configs_load(name: str) -> None:
    cfg = load_config(ROOT / name)
    assert cfg.instances and cfg.policies


@pytest.mark.parametrize("kind", ["mastodon", "misskey", "akkoma", "lemmy", "gotosocial", "pixelfed"])
def test_backend_configs_extend_the_default_policy(kind: str) -> None:
    cfg = load_config(ROOT / "config" / f"{kind}.yaml")
    base = load_config(ROOT / "config" / "default.yaml")
    inst = cfg.instances[0]
    assert inst.kind == kind and inst.hosts and inst.upstream
    assert inst.policy.rules == base.policies["csam"].rules  # the same CSAM policy, not a copy that drifts
    if kind not in ("lemmy", "gotosocial", "pixelfed"):
        assert inst.policy.limits.max_bytes == cfg.server.max_body_bytes == 104857600


def test_extends_merges_deeply_and_refuses_cycles(tmp_path: Path) -> None:
    import yaml

    (tmp_path / "base.yaml").write_text(yaml.safe_dump(config_dict()))
    (tmp_path / "child.yaml").write_text("extends: base.yaml\npolicies: {main: {limits: {max_tiles: 3}}}\n")
    cfg = load_config(tmp_path / "child.yaml")
    assert cfg.policies["main"].limits.max_tiles == 3
    assert cfg.policies["main"].actions == {"flagged": "reject"}  # the rest of the policy kept
    (tmp_path / "a.yaml").write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    with pytest.raises(ConfigError, match="extends itself"):
        load_config(tmp_path / "a.yaml")


def test_default_policy_is_fail_closed_and_rejects_csam() -> None:
    cfg = load_config(ROOT / "config/default.yaml")
    pol = cfg.policies["csam"]
    assert pol.on_error == "reject" and pol.on_invalid == "reject"
    assert pol.action_for({"csam"}) == "reject"
    assert pol.action_for({"nsfw"}) == "accept"
    assert pol.action_for({"csam", "nsfw"}) == "reject"
    assert cfg.classifier.clip.model == "ViT-L-14"


def err(raw: dict) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(raw)
    return info.value


def test_unknown_policy_names_instance_path() -> None:
    raw = config_dict()
    raw["instances"].append({"name": "b", "policy": "nope", "upstream": "http://x"})
    e = err(raw)
    assert e.path == "instances[1].policy"
    assert "'nope' is not a policy" in str(e)


def test_rule_errors_carry_full_yaml_path() -> None:
    raw = config_dict(policy(labels={"flagged": {"all": [{"concept": "typo"}]}}))
    assert err(raw).path == "policies.main.labels.flagged.all[0].concept"


@pytest.mark.parametrize(
    ("mutate", "path"),
    [
        (lambda r: r["server"].update(listen="nope"), "server.listen"),
        (lambda r: r["server"].update(colour="blue"), "server.colour"),
        (lambda r: r["classifier"].update(device="tpu"), "classifier.device"),
        (lambda r: r["classifier"].update(max_batch=0), "classifier.max_batch"),
        (lambda r: r["policies"]["main"].update(on_error="maybe"), "policies.main.on_error"),
        (lambda r: r["policies"]["main"].update(on_eror="accept"), "policies.main.on_eror"),
        (lambda r: r["policies"]["main"]["actions"].update(flagged="burn"), "policies.main.actions.flagged"),
        (lambda r: r["policies"]["main"]["actions"].update(other="reject"), "policies.main.actions.other"),
        (lambda r: r["policies"]["main"].update(deny={"hashes": ["xyz"]}), "policies.main.deny.hashes[0]"),
        (lambda r: r["policies"]["main"].update(limits={"max_pixels": -1}), "policies.main.limits.max_pixels"),
        (lambda r: r["policies"]["main"]["actions"].update(flagged="quarantine"), "policies.main.quarantine_dir"),
        (lambda r: r["instances"][0].update(kind="wordpress"), "instances[0].kind"),
        (lambda r: r["instances"][0].update(upstream="ftp://x"), "instances[0].upstream"),
        (lambda r: r["fetch"].update(allow_networks=["300.0.0.0/8"]), "fetch.allow_networks[0]"),
        (lambda r: r.update(instances=[]), "instances"),
    ],
)
def test_errors_name_their_path(mutate, path) -> None:
    raw = copy.deepcopy(config_dict(fetch={}))
    mutate(raw)
    assert err(raw).path == path


def test_detector_keys_are_checked() -> None:
    raw = config_dict(policy(concepts={"standin": {"signals": {"nudenet.FACE_FEMAL": 0.5}}}))
    e = err(raw)
    assert "has no score 'FACE_FEMAL'" in str(e)
    raw = config_dict(policy(concepts={"standin": {"signals": {"magic.x": 0.5}}}))
    assert "unknown signal source 'magic'" in str(err(raw))


def test_env_expansion(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = config_dict()
    raw["server"]["admin_token"] = "${FFP_TEST_TOKEN}"
    raw["server"]["audit_db"] = "${FFP_TEST_UNSET:-fallback.db}"
    monkeypatch.setenv("FFP_TEST_TOKEN", "s3cret")
    cfg = parse_config(copy.deepcopy(raw))
    assert cfg.server.admin_token == "s3cret"
    assert cfg.server.audit_db == "fallback.db"
    monkeypatch.delenv("FFP_TEST_TOKEN")
    e = err(raw)
    assert e.path == "server.admin_token" and "FFP_TEST_TOKEN is not set" in str(e)


def test_hash_list_files(tmp_path: Path) -> None:
    good = "a" * 64
    (tmp_path / "allow.txt").write_text(f"# reviewed false positives\n{good}  holiday photo\n\n")
    (tmp_path / "bad.txt").write_text("not-a-hash\n")
    raw = config_dict(policy(allow={"files": ["allow.txt"]}))
    cfg = parse_config(copy.deepcopy(raw), base=tmp_path)
    assert cfg.policies["main"].allow.entries["sha256"] == {good}
    raw = config_dict(policy(allow={"files": ["bad.txt"]}))
    with pytest.raises(ConfigError, match=r"bad.txt:1: 'not-a-hash' is not a valid"):
        parse_config(raw, base=tmp_path)


def test_instance_claiming() -> None:
    raw = config_dict()
    raw["instances"].append({"name": "social", "hosts": ["Social.Example"], "policy": "main", "upstream": "http://m"})
    cfg = parse_config(raw)
    assert cfg.instance_claiming("social.example:443").name == "social"
    assert cfg.instance_claiming("other.example") is None
    assert cfg.instance_claiming(None) is None
    raw["instances"][1]["upstream"] = ""
    with pytest.raises(ConfigError, match="needs an upstream"):
        parse_config(raw)


def test_default_csam_rules_combine_as_horde_safety_does() -> None:
    """The shipped thresholds, read by the generic rules engine, on made-up score vectors."""
    rules = load_config(ROOT / "config/default.yaml").policies["csam"].rules

    def labels(**scores: float) -> frozenset[str]:
        return rules.evaluate({("clip", k.replace("_", " ")): v for k, v in scores.items()}).labels

    assert labels(child=0.19, children=0.19, teen=0.215, naked=0.2) == {"csam", "nsfw"}
    assert labels(child=0.19, children=0.19, naked=0.2) == {"nsfw"}  # two underage hits are not enough
    assert labels(child=0.23, nudity=0.2) == {"csam", "nsfw"}  # a critical hit counts three
    assert labels(child=0.19, children=0.19, teen=0.215) == frozenset()  # nothing lewd: no label
    # control words: a pregnant woman's photo lowers the infant/toddler scores below their thresholds
    assert labels(infant=0.2, infants=0.2, toddler=0.2, porn=0.21) == {"csam", "nsfw"}
    assert labels(infant=0.2, infants=0.2, toddler=0.2, porn=0.21, pregnant=0.22) == {"nsfw"}
    assert labels(teen=0.22, teens=0.22, tween=0.19, naked=0.2, east_asian=0.25) == {"nsfw"}


# --- the reference config and the schema agree -------------------------------------------------------


def _schema_keys(cls: type) -> set[str]:
    from proxy.schema import yaml_fields

    return {key for key, _ in yaml_fields(cls)}


def test_reference_config_lists_every_key_with_its_default() -> None:
    """examples/config.reference.yaml documents every key the dataclasses declare, each with its default."""
    import dataclasses

    import yaml

    from proxy import config as c
    from proxy.schema import default_of

    raw = yaml.safe_load((ROOT / "examples" / "config.reference.yaml").read_text())
    loaded = load_config(ROOT / "examples" / "config.reference.yaml")
    sections = {"server": (c.ServerConfig, loaded.server), "classifier": (c.ClassifierSettings, loaded.classifier),
                "fetch": (c.FetchConfig, loaded.fetch), "egress": (c.EgressConfig, loaded.egress),
                "native_apis": (c.NativeApisConfig, loaded.native_apis), "workers": (c.WorkersConfig, loaded.workers)}
    assert set(raw) == _schema_keys(c.Config)
    assert raw["store"] is None and loaded.store is None
    for name, (cls, value) in sections.items():
        assert set(raw[name]) == _schema_keys(cls), name
        assert value == cls(), f"{name}: the reference shows other values than the defaults"
    policy_raw = next(iter(raw["policies"].values()))
    assert set(policy_raw) == _schema_keys(c.Policy)
    assert set(policy_raw["limits"]) == _schema_keys(c.MediaLimits)
    assert set(policy_raw["allow"]) == set(policy_raw["deny"]) == _schema_keys(c.HashListConfig)
    pol = next(iter(loaded.policies.values()))
    assert pol.limits == c.MediaLimits()
    for f in dataclasses.fields(c.Policy):
        if f.name in ("inbox", "on_error", "on_invalid", "on_unsupported", "prefetch", "inbox_timeout_ms", "timeout_ms",
                      "reject_status", "quarantine_dir", "pdq_distance"):
            assert getattr(pol, f.name) == default_of(f), f.name
    assert set(raw["instances"][0]) == _schema_keys(c.Instance)


def test_every_key_has_a_doc() -> None:
    from proxy import config as c
    from proxy.schema import yaml_fields

    for cls in c.reference_fields().values():
        for key, f in yaml_fields(cls):
            assert f.metadata.get("doc"), f"{cls.__name__}.{key} has no doc"


RULE_CONCEPTS = {
    "young": {"prompts": {"child": 0.2, "teen": 0.2}, "critical": {"child": 0.3}},
    "lewd": {"prompts": {"nudity": 0.2}, "signals": {"open_nsfw.nsfw": 0.8}},
}


@pytest.mark.parametrize(
    ("concepts", "labels", "adjustments", "path", "needle"),
    [
        (RULE_CONCEPTS, {"x": {"all": [{"concept": "nope"}]}}, None, "policies.main.labels.x.all[0].concept", "'nope' is not a concept"),
        (RULE_CONCEPTS, {"x": {"all": [{"concept": "young", "min_hits": 0}]}}, None, "policies.main.labels.x.all[0].min_hits",
         "positive"),
        (RULE_CONCEPTS, {"x": {"all": []}}, None, "policies.main.labels.x.all", "non-empty"),
        (RULE_CONCEPTS, {"x": {"both": []}}, None, "policies.main.labels.x.both", "unknown key"),
        (RULE_CONCEPTS, {"x": {"all": [{"concept": "young"}], "any": [{"concept": "lewd"}]}}, None, "policies.main.labels.x",
         "exactly one"),
        ({"c": {"prompts": {"cat": "high"}}}, {}, None, "policies.main.concepts.c.prompts['cat']", "not a number"),
        ({"c": {"prompts": {"cat": 2}}}, {}, None, "policies.main.concepts.c.prompts['cat']", "outside"),
        ({"c": {"signals": {"nsfw": 0.5}}}, {}, None, "policies.main.concepts.c.signals['nsfw']", "source.key"),
        ({"c": {}}, {}, None, "policies.main.concepts.c", "at least one"),
        (RULE_CONCEPTS, {}, [{"when": {"prompt": "a", "signal": "open_nsfw.nsfw", "above": 0.1}, "add": {"teen": 0.1}}],
         "policies.main.adjustments[0].when", "exactly one"),
        (RULE_CONCEPTS, {}, [{"when": {"prompt": "a", "above": 0.1}, "add": {}}], "policies.main.adjustments[0].add",
         "at least one"),
    ],
)
def test_rule_errors_name_the_path(concepts, labels, adjustments, path: str, needle: str) -> None:
    pol = {"concepts": concepts, "labels": labels}
    if adjustments is not None:
        pol["adjustments"] = adjustments
    e = err(config_dict(pol))
    assert e.path == path and needle in e.message


def test_rules_are_built_from_the_policy() -> None:
    pol = {"concepts": RULE_CONCEPTS, "labels": {"both": {"all": [{"concept": "young", "min_hits": 3}, {"concept": "lewd"}]}},
           "adjustments": [{"when": {"signal": "open_nsfw.nsfw", "above": 0.5}, "add": {"teen": -0.1}}],
           "actions": {"both": "reject"}}
    rules = parse_config(config_dict(pol)).policies["main"].rules
    assert rules.evaluate({("clip", "child"): 0.31, ("open_nsfw", "nsfw"): 0.9}).labels == {"both"}
    assert rules.sources() == {"clip", "open_nsfw"}
    adjusted = rules.evaluate({("clip", "teen"): 0.25, ("open_nsfw", "nsfw"): 0.9})
    assert adjusted.scores[("clip", "teen")] == pytest.approx(0.15)


def test_the_every_policy_name_is_reserved() -> None:
    """A URL denied to "*" is denied to every policy (stores.EVERY_POLICY): no policy may take the name."""
    raw = config_dict()
    raw["policies"]["*"] = raw["policies"]["main"]
    with pytest.raises(ConfigError, match="reserved"):
        parse_config(raw)
