"""Loading a model by Hub id: from the local cache when it is there, else fail fast when the Hub is out of reach.

transformers retries an unreachable Hub for half a minute before it says so; a training run on
an offline machine should instead say at once what to do (point ``--model`` at a folder).
"""

from __future__ import annotations

import os
from typing import Callable, TypeVar

from .._io import hub_id

T = TypeVar("T")
_TRUE = {"1", "ON", "YES", "TRUE"}
CONNECT_TIMEOUT = 5.0  # seconds for the one reachability request


def in_local_cache(repo_id: str) -> bool:
    """Whether the repository's ``config.json`` is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)


def _offline() -> bool:
    from huggingface_hub import constants

    env = any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    return env or bool(constants.HF_HUB_OFFLINE)


def check_hub(repo_id: str, option: str = "--model") -> None:
    """Raise a ValueError at once when ``repo_id`` cannot be fetched: offline mode, Hub unreachable, no such repo.

    One request with a short timeout (``HfApi.model_info``); other Hub answers (a gated model,
    a server error) are left to transformers, whose messages cover them.
    """
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    where = (
        f"{repo_id!r} is neither a local folder nor in the local Hugging Face cache ({constants.HF_HUB_CACHE})"
    )
    advice = (
        f"download it on a machine with internet (`hf download {repo_id} --local-dir DIR`), copy DIR here "
        f"and pass `{option} DIR` (a folder with config.json, the weights, the tokenizer files and "
        f"preprocessor_config.json); or try `{option} mini`, the small CLIP shipped with textrefiner"
    )
    if _offline():
        raise ValueError(f"{where}, and offline mode is on (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE): {advice}")
    try:
        HfApi().model_info(repo_id, timeout=CONNECT_TIMEOUT)
    except RepositoryNotFoundError:
        raise ValueError(
            f"{where}, and the Hub ({constants.ENDPOINT}) has no model {repo_id!r} (or it is private: log in "
            f"with `hf auth login`); check the name, or pass `{option} DIR` with a local folder"
        ) from None
    except HfHubHTTPError:
        return
    except Exception as err:  # connection refused, no DNS, timeout: the transport's own error types
        raise ValueError(f"{where}, and the Hub ({constants.ENDPOINT}) cannot be reached ({type(err).__name__}: {err}): {advice}") from None


def load_offline_first(load: Callable[..., T], name_or_path: str, option: str = "--model") -> T:
    """``load(name_or_path, **kwargs)``, from the local cache first when ``name_or_path`` is a Hub id.

    Args:
        load: calls ``from_pretrained`` with its keyword arguments (``local_files_only``) and
            raises ValueError or OSError when that fails.
        name_or_path: a local folder or a Hub repository id.
        option: the command-line option named in the error message.
    """
    repo = hub_id(name_or_path)
    if repo is None:
        return load(name_or_path)
    if in_local_cache(repo):
        try:
            return load(name_or_path, local_files_only=True)
        except (OSError, ValueError):
            pass  # only part of it is cached: the Hub has the rest
    check_hub(repo, option)
    return load(name_or_path)
