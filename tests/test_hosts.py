"""OLLAMA_HOST: the same rules as the official ollama client (its own doctest cases)."""

import pytest

from llm_experiment.hosts import default_model, listen_address, parse_host, server_url

CASES = {
    None: "http://127.0.0.1:11434",
    "": "http://127.0.0.1:11434",
    "1.2.3.4": "http://1.2.3.4:11434",
    ":56789": "http://127.0.0.1:56789",
    "1.2.3.4:56789": "http://1.2.3.4:56789",
    "http://1.2.3.4": "http://1.2.3.4:80",
    "https://1.2.3.4": "https://1.2.3.4:443",
    "https://1.2.3.4:56789": "https://1.2.3.4:56789",
    "example.com": "http://example.com:11434",
    "example.com:56789": "http://example.com:56789",
    "http://example.com": "http://example.com:80",
    "https://example.com": "https://example.com:443",
    "https://example.com:56789": "https://example.com:56789",
    "example.com/": "http://example.com:11434",
    "example.com:56789/": "http://example.com:56789",
    "example.com/path": "http://example.com:11434/path",
    "example.com:56789/path": "http://example.com:56789/path",
    "https://example.com:56789/path": "https://example.com:56789/path",
    "example.com:56789/path/": "http://example.com:56789/path",
    "[0001:002:003:0004::1]": "http://[0001:002:003:0004::1]:11434",
    "[0001:002:003:0004::1]:56789": "http://[0001:002:003:0004::1]:56789",
    "http://[0001:002:003:0004::1]": "http://[0001:002:003:0004::1]:80",
    "https://[0001:002:003:0004::1]": "https://[0001:002:003:0004::1]:443",
    "https://[0001:002:003:0004::1]:56789": "https://[0001:002:003:0004::1]:56789",
    "[0001:002:003:0004::1]/": "http://[0001:002:003:0004::1]:11434",
    "[0001:002:003:0004::1]:56789/": "http://[0001:002:003:0004::1]:56789",
    "[0001:002:003:0004::1]/path": "http://[0001:002:003:0004::1]:11434/path",
    "[0001:002:003:0004::1]:56789/path": "http://[0001:002:003:0004::1]:56789/path",
    "https://[0001:002:003:0004::1]:56789/path": "https://[0001:002:003:0004::1]:56789/path",
    "[0001:002:003:0004::1]:56789/path/": "http://[0001:002:003:0004::1]:56789/path",
}


@pytest.mark.parametrize("given, expected", CASES.items())
def test_parse_host_matches_the_ollama_client(given, expected):
    assert parse_host(given) == expected


def test_parse_host_agrees_with_the_installed_ollama_client():
    from ollama._client import _parse_host

    for given in CASES:
        assert parse_host(given) == _parse_host(given), given


def test_server_url_reads_ollama_host(monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "teacher:8080")
    assert server_url() == "http://teacher:8080"
    assert server_url("http://other") == "http://other:80"


def test_listen_address_defaults_and_overrides():
    assert listen_address(None) == ("127.0.0.1", 11434)
    assert listen_address("0.0.0.0") == ("0.0.0.0", 11434)
    assert listen_address(":9000") == ("127.0.0.1", 9000)


def test_default_model_reads_llm_model(monkeypatch):
    assert default_model() == "smollm2:135m"
    monkeypatch.setenv("LLM_MODEL", "llama3.2:1b")
    assert default_model() == "llama3.2:1b"
