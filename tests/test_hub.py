"""Hub names offline: one line at once, with the HF_HUB_OFFLINE hint, instead of half a minute of retries."""

import socket
import time

import pytest
from test_cli import assert_one_line_error, run

from srsum.errors import SrsumError
from srsum.hub import hub_endpoint, require_hub
from srsum.summarize import check_model_source


@pytest.fixture
def unreachable(monkeypatch):
    attempts = []

    def refuse(address, timeout=None, *args, **kwargs):
        attempts.append((address, timeout))
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", refuse)
    return attempts


def test_a_hub_name_fails_at_once_when_the_hub_cannot_be_reached(unreachable):
    started = time.perf_counter()
    with pytest.raises(SrsumError) as info:
        check_model_source("srsum-test/no-such-model")
    assert time.perf_counter() - started < 2
    message = str(info.value)
    assert "\n" not in message and "'srsum-test/no-such-model'" in message
    assert "Name or service not known" in message and "HF_HUB_OFFLINE=1" in message
    assert unreachable == [(("huggingface.co", 443), 3.0)]


def test_the_endpoint_follows_hf_endpoint(unreachable, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://mirror.example:8080")
    assert hub_endpoint() == ("mirror.example", 8080)
    with pytest.raises(SrsumError, match="mirror.example"):
        require_hub("someone/model")


def test_offline_mode_cached_models_and_local_folders_go_straight_to_the_loader(unreachable, monkeypatch, tmp_path):
    import srsum.hub

    check_model_source(str(tmp_path))  # a folder that exists
    monkeypatch.setattr(srsum.hub, "in_cache", lambda repo_id, filename="config.json": repo_id == "cached/model")
    require_hub("cached/model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    require_hub("someone/model")
    assert unreachable == []  # none of these asked the network


def test_a_reachable_hub_is_left_to_the_loader(monkeypatch):
    class Open:
        def close(self):
            pass

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda address, timeout=None: Open())
    require_hub("someone/model")


def test_summarize_with_a_hub_name_offline_is_one_line(unreachable, tmp_path):
    article = tmp_path / "a.txt"
    article.write_text("The park opens in May.")
    assert_one_line_error(run("summarize", article, "--model", "srsum-test/no-such-model"),
                          "cannot be reached", "HF_HUB_OFFLINE=1", code=1)  # a runtime failure


def test_a_hub_dataset_failure_offline_names_the_offline_switches(unreachable, monkeypatch):
    import datasets

    from srsum.data import load_examples

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach the Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(SrsumError, match="HF_DATASETS_OFFLINE=1"):
        load_examples("someone/news")
