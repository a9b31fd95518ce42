"""Offline mode: the course reads HF_HUB_OFFLINE as huggingface_hub does, in every place."""
import socket

import pytest

from sdcourse import models
from sdcourse.images import DownloadError, download_image


@pytest.mark.parametrize("value, offline", [("1", True), ("true", True), ("YES", True), ("on", True),
                                            (" On ", True), ("0", False), ("false", False), ("", False)])
def test_offline_mode_accepts_the_values_huggingface_hub_accepts(monkeypatch, value, offline):
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    assert models.offline_mode() is offline


def test_transformers_offline_counts_too(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert models.offline_mode() is True


def test_on_means_offline_for_the_model_choice_and_for_downloads_alike(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=on once made download_image offline while choose_model still probed
    the network: both now ask offline_mode."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "on")

    def no_network(*args, **kwargs):
        raise AssertionError("the network was probed in offline mode")

    monkeypatch.setattr(socket, "create_connection", no_network)
    assert models.hub_reachable() is False
    with pytest.raises(DownloadError, match=r"offline mode is on \(HF_HUB_OFFLINE=on\).*Unset HF_HUB_OFFLINE"):
        download_image("http://127.0.0.1:9/not-a-stand-in.png", cache_dir=tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")  # the message names the variable that is set
    with pytest.raises(DownloadError, match=r"offline mode is on \(TRANSFORMERS_OFFLINE=1\).*Unset "
                       "TRANSFORMERS_OFFLINE"):
        download_image("http://127.0.0.1:9/not-a-stand-in.png", cache_dir=tmp_path)
