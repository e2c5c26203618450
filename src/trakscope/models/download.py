"""``--download`` fails within seconds when the host that would serve the files cannot be reached.

transformers, timm and torchvision retry a host that does not answer for minutes before they fail (1 min 42 s
measured for an ``hf:`` hub id with the endpoint's port closed). With ``--download``, trakscope first asks each host
once, with a short timeout, through the same proxy settings the libraries use (``HTTPS_PROXY``, ``NO_PROXY``): any
answer, even an error status or a certificate the library may accept, means the host is there and the library takes
over. The hosts are the libraries' own (``HF_ENDPOINT`` included), never named here.
"""

from __future__ import annotations

import ssl
import threading
import urllib.error
import urllib.request
from pathlib import Path

import torch

from ..config import ModelConfig
from .base import WeightsError, wants_pretrained
from .torchvision_models import default_weights

REACH_TIMEOUT_S = 5.0  # seconds a host has to answer one request: a reachable one answers in well under a second


def hf_endpoint() -> str:
    """The Hugging Face endpoint the libraries fetch from (``huggingface_hub``'s, which reads ``HF_ENDPOINT``)."""
    from huggingface_hub import constants  # lazy: huggingface_hub is optional (the hf extra)

    return str(constants.ENDPOINT)


def download_urls(cfg: ModelConfig) -> list[str]:
    """Where ``--download`` would fetch ``cfg.name``'s files from; [] where nothing would be fetched.

    ``hf:`` a hub id (not a local folder): the Hugging Face endpoint (configuration and preprocessing are fetched
    even for random weights). ``timm:`` and ``torchvision:`` with their own pretrained weights (no ``--weights-path``):
    the endpoint for weights on the Hugging Face Hub, else the weights file's URL unless torch's hub cache has it.
    The built-in models never download.
    """
    prefix, sep, spec = cfg.name.partition(":")
    if not cfg.download or not sep:
        return []
    if prefix == "hf":
        return [] if Path(spec).expanduser().exists() else [hf_endpoint()]
    if not wants_pretrained(cfg) or cfg.weights_path is not None:
        return []
    if prefix == "timm":
        return _timm_urls(spec)
    if prefix == "torchvision":
        return _torchvision_urls(spec)
    return []


def _timm_urls(spec: str) -> list[str]:
    from timm.models import get_pretrained_cfg  # lazy: timm is optional (the hf extra) and slow to import

    pretrained = get_pretrained_cfg(spec)
    if pretrained is None:
        return []
    if pretrained.hf_hub_id:
        return [hf_endpoint()]
    return [pretrained.url] if pretrained.url and not _in_hub_cache(pretrained.url) else []


def _torchvision_urls(spec: str) -> list[str]:
    weights = default_weights(spec)
    return [weights.url] if weights is not None and not _in_hub_cache(weights.url) else []


def _in_hub_cache(url: str) -> bool:
    """Whether torch's hub cache already holds the file ``url`` names (then nothing is fetched)."""
    return (Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name).is_file()


def unreachable(url: str, timeout: float = REACH_TIMEOUT_S) -> str | None:
    """Why ``url`` gave no answer within ``timeout`` seconds (refused, no such host, timed out), or None: it answered.

    The request runs in a daemon thread so that a name lookup that hangs is cut off at the timeout too.
    """
    found: list[str] = []

    def ask() -> None:
        try:
            urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=timeout).close()
        except urllib.error.HTTPError:
            pass  # an answer, if an error status
        except urllib.error.URLError as e:
            if not isinstance(e.reason, ssl.SSLError):  # a TLS answer: certificates are the library's business
                found.append(str(e.reason))
        except (OSError, ValueError) as e:  # timed out, reset, a malformed URL
            found.append(str(e) or type(e).__name__)

    thread = threading.Thread(target=ask, daemon=True)
    thread.start()
    thread.join(timeout + 1.0)
    if thread.is_alive():
        return f"no answer within {timeout:g} s"
    return found[0] if found else None


def check_download_hosts(cfg: ModelConfig, timeout: float = REACH_TIMEOUT_S) -> None:
    """With ``cfg.download``, ask every host of :func:`download_urls` once before any library does.

    Raises:
        WeightsError: one line naming the host that gave no answer and what to do.
    """
    for url in download_urls(cfg):
        reason = unreachable(url, timeout)
        if reason is not None:
            raise WeightsError(f"--download: {url} cannot be reached ({reason}; asked once with a {timeout:g} s "
                               "timeout); check the network or the proxy settings (HTTPS_PROXY, HF_ENDPOINT), or "
                               "drop --download to use what is on this machine (--model hf:<folder>, --weights-path "
                               "FILE, or the libraries' caches)")
