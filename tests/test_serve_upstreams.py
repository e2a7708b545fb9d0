"""The upstreams file: parsing, checks against the router and the environment, clear one-line errors."""

import json

import pytest

from carrot_hub.serving.upstreams import (
    UpstreamConfigError,
    UpstreamPool,
    check_candidates,
    check_keys,
    parse_upstreams,
    read_upstreams_file,
)

GOOD = {"big-model": {"base_url": "http://127.0.0.1:9001/v1/", "model": "smol", "api_key_env": "BIG_KEY",
                      "timeout": 5, "max_concurrency": 4},
        "small-model": {"base_url": "http://127.0.0.1:9002/v1", "model": "smol"}}


def test_yaml_and_json_files(tmp_path):
    yaml_file = tmp_path / "upstreams.yaml"
    yaml_file.write_text(
        "upstreams:\n"
        "  big-model:\n    base_url: http://127.0.0.1:9001/v1/\n    model: smol\n    api_key_env: BIG_KEY\n"
        "    timeout: 5\n    max_concurrency: 4\n"
        "  small-model:\n    base_url: http://127.0.0.1:9002/v1\n    model: smol\n")
    json_file = tmp_path / "upstreams.json"
    json_file.write_text(json.dumps(GOOD))
    for path in (yaml_file, json_file):
        specs = read_upstreams_file(path)
        assert list(specs) == ["big-model", "small-model"]
        big = specs["big-model"]
        assert (big.base_url, big.model, big.api_key_env, big.timeout, big.max_concurrency) == (
            "http://127.0.0.1:9001/v1", "smol", "BIG_KEY", 5.0, 4)
        assert specs["small-model"].api_key_env is None


@pytest.mark.parametrize(
    "content, needle",
    [
        ({}, "names no upstream"),
        ([], "names no upstream"),
        ({"big-model": "http://x"}, "must be a mapping"),
        ({"big-model": {"base_url": "127.0.0.1:9001", "model": "m"}}, "base_url must be an http(s) URL"),
        ({"big-model": {"base_url": "http://h/v1"}}, "model (the upstream's own model id)"),
        ({"big-model": {"base_url": "http://h/v1", "model": "m", "api_key": "sk-1"}}, "unknown keys ['api_key']"),
        ({"big-model": {"base_url": "http://h/v1", "model": "m", "timeout": 0}}, "timeout must be a positive"),
        ({"big-model": {"base_url": "http://h/v1", "model": "m", "max_concurrency": 1.5}}, "max_concurrency"),
        ({"big-model": {"base_url": "http://h/v1", "model": "m", "api_key_env": ""}}, "api_key_env"),
    ],
)
def test_bad_entries_are_named(content, needle):
    with pytest.raises(UpstreamConfigError) as caught:
        parse_upstreams(content)
    assert needle in str(caught.value)
    assert "\n" not in str(caught.value)


def test_unreadable_files(tmp_path):
    with pytest.raises(UpstreamConfigError, match="Cannot read the upstreams file"):
        read_upstreams_file(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("big-model: [unclosed\n")
    with pytest.raises(UpstreamConfigError, match="not valid YAML/JSON"):
        read_upstreams_file(broken)


def test_checks_against_the_router_and_environment():
    specs = parse_upstreams(GOOD)
    check_candidates(specs, ["big-model", "mid-model", "small-model"])
    check_keys(specs, environ={"BIG_KEY": "sk-1"})
    with pytest.raises(UpstreamConfigError, match=r"'small-model', which is not a candidate.*Known candidates: big-model"):
        check_candidates(specs, ["big-model"])
    with pytest.raises(UpstreamConfigError, match=r"\$BIG_KEY, which is not set") as caught:
        check_keys(specs, environ={})
    assert "sk-" not in str(caught.value)


def test_pool_needs_an_upstream_and_redacts_keys():
    with pytest.raises(UpstreamConfigError, match="No upstream"):
        UpstreamPool({})
    pool = UpstreamPool(parse_upstreams(GOOD), environ={"BIG_KEY": "sk-secret-42"})
    assert pool.redact("refused key sk-secret-42, sorry") == "refused key ***, sorry"
    assert pool.names == ["big-model", "small-model"]


def test_a_pool_apart_has_the_same_upstreams_on_connections_of_its_own():
    pool = UpstreamPool(parse_upstreams(GOOD), environ={"BIG_KEY": "sk-secret-42"})
    apart = pool.apart(8)
    assert apart.names == pool.names
    assert [apart[n].spec.max_concurrency for n in apart.names] == [4, 8]  # its own limit when lower
    assert (apart["big-model"].spec.base_url, apart["big-model"].spec.timeout) == (pool["big-model"].spec.base_url, 5)
    assert apart.redact("key sk-secret-42") == "key ***"  # the same key, read once by the first pool
    assert apart["big-model"]._client is not pool["big-model"]._client
