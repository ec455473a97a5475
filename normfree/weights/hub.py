"""Weights by Hugging Face Hub id (`hf-hub:timm/eca_nfnet_l0.ra2_in1k`), through the optional
`huggingface_hub` package: its standard cache, its `HF_HUB_OFFLINE` switch. normfree downloads
only here, and only for an id the user named."""

import functools
import re
import socket
import urllib.parse

from ..errors import CheckpointError, MissingDependency
from .releases import HUB_PREFIX

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # preferred first
_REPO_ID = re.compile(r"[\w.-]+/[\w.-]+")
_NOT_CACHED = object()  # `download`'s answer for a file neither cached nor reachable


def is_hub_id(source):
    return isinstance(source, str) and source.startswith(HUB_PREFIX)


def fetch(source):
    """(weights file, its timm `config.json` or None) for `hf-hub:owner/name`, from the cache
    or downloaded into it."""
    repo_id = source[len(HUB_PREFIX):]
    if not _REPO_ID.fullmatch(repo_id):
        raise CheckpointError(f"{source!r}: a hub id is hf-hub:OWNER/NAME, e.g. "
                              "hf-hub:timm/eca_nfnet_l0.ra2_in1k")
    try:
        import huggingface_hub
        from huggingface_hub import constants, errors
    except ImportError:
        raise MissingDependency("weights by hub id need the hub extra: pip install "
                                "'normfree[hub]'") from None
    online = functools.cache(lambda: not constants.HF_HUB_OFFLINE and reachable(
        constants.ENDPOINT))

    def download(filename):
        try:  # the cache first: no network needed
            return huggingface_hub.hf_hub_download(repo_id, filename, local_files_only=True)
        except errors.LocalEntryNotFoundError:
            if not online():
                return _NOT_CACHED
        try:
            return huggingface_hub.hf_hub_download(repo_id, filename)
        except errors.LocalEntryNotFoundError:  # offline (or unreachable) and not cached
            return _NOT_CACHED
        except (errors.EntryNotFoundError, errors.RevisionNotFoundError):
            return None
        except errors.RepositoryNotFoundError:
            raise CheckpointError(f"{repo_id}: no such repository on the Hugging Face Hub (or "
                                  "it is private: log in with `hf auth login`)") from None
        except (errors.HfHubHTTPError, OSError) as e:
            raise CheckpointError(f"{repo_id}: could not fetch {filename} ({e})") from None

    weights = None
    for filename in WEIGHT_FILES:
        weights = download(filename)
        if weights not in (None, _NOT_CACHED):
            break
    if weights is _NOT_CACHED:
        raise CheckpointError(
            f"{repo_id}: {WEIGHT_FILES[0]} is not in the Hugging Face cache and the Hub cannot "
            "be reached (HF_HUB_OFFLINE is set, or no network). Fetch it once online, e.g. "
            f"`hf download {repo_id} {WEIGHT_FILES[0]} config.json`, or unset HF_HUB_OFFLINE")
    if weights is None:
        raise CheckpointError(f"{repo_id}: holds none of {', '.join(WEIGHT_FILES)}")
    config = download("config.json")
    return weights, (None if config is _NOT_CACHED else config)


def reachable(endpoint, timeout=5.0):
    """Whether the Hub's host takes a connection: one attempt of `timeout` seconds, where
    huggingface_hub would retry for ~50 s with a warning each time when there is no network."""
    url = urllib.parse.urlsplit(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
