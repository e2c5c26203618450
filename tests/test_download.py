"""``--download`` fails within seconds when the host cannot be reached: asked once, with a short timeout, on
local ports only (a closed one, one that never answers, one that answers 404); no test touches the network."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from pathlib import Path

import pytest

from trakscope.config import ModelConfig
from trakscope.models.download import download_urls, unreachable


def _closed_port_url() -> str:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there any more: a connection is refused at once
    return f"http://127.0.0.1:{port}"


def test_a_refused_or_silent_host_is_unreachable_within_the_timeout_and_any_answer_is_reachable():
    started = time.perf_counter()
    assert "refused" in unreachable(_closed_port_url(), timeout=2.0).lower()
    assert time.perf_counter() - started < 2.0
    silent = socket.socket()  # accepts connections (the kernel's backlog) but never answers a request
    silent.bind(("127.0.0.1", 0))
    silent.listen(1)
    started = time.perf_counter()
    assert unreachable(f"http://127.0.0.1:{silent.getsockname()[1]}", timeout=0.5) is not None
    assert time.perf_counter() - started < 2.0
    silent.close()

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self):  # noqa: N802 - http.server's name
            self.send_response(404)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        assert unreachable(f"http://127.0.0.1:{server.server_port}", timeout=2.0) is None  # an error status answers
    finally:
        server.shutdown()


def test_run_with_download_fails_in_seconds_when_the_hugging_face_endpoint_cannot_be_reached(tmp_path, monkeypatch,
                                                                                              capsys):
    pytest.importorskip("transformers")
    from huggingface_hub import constants

    from trakscope.cli import main

    endpoint = _closed_port_url()
    monkeypatch.setenv("HF_ENDPOINT", endpoint)  # what a user sets; read once when huggingface_hub is imported
    monkeypatch.setattr(constants, "ENDPOINT", endpoint)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache: the model must be fetched
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    started = time.perf_counter()
    code = main(["run", "--out", str(tmp_path / "run"), "--dataset", "digits", "--model", "hf:someone/some-model",
                 "--download", "--max-train", "50", "--no-progress", "--device", "cpu"])
    elapsed = time.perf_counter() - started
    err = capsys.readouterr().err
    assert code == 2 and elapsed < 20  # the libraries' own retries took 1 min 42 s
    assert f"--download: {endpoint} cannot be reached" in err and "drop --download" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


def test_only_what_would_be_fetched_is_asked_for(tmp_path, monkeypatch, hf_dir):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache
    from trakscope.models.torchvision_models import default_weights

    assert download_urls(ModelConfig(name="hf:someone/some-model")) == []  # no --download: nothing is fetched
    assert download_urls(ModelConfig(name=f"hf:{hf_dir}", download=True)) == []  # a local folder
    assert download_urls(ModelConfig(name="resnet18", weights="imagenet", download=True)) == []  # built-ins never
    tv = ModelConfig(name="torchvision:resnet18", weights="pretrained", download=True)
    assert download_urls(tv) == [default_weights("resnet18").url]
    assert download_urls(ModelConfig(name="torchvision:resnet18", download=True)) == []  # random weights
    import torch

    cached = Path(torch.hub.get_dir()) / "checkpoints" / default_weights("resnet18").url.rsplit("/", 1)[1]
    assert str(cached).startswith(str(tmp_path))
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert download_urls(tv) == []  # torch's hub cache has it
