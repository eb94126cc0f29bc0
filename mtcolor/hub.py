"""Published weights files in torch hub's checkpoint cache: lookup, and download with hash check.

A file published torch-hub style carries a sha256 prefix in its name ('name-<hex>.ext').
`find_hub_checkpoint` looks for it where torch caches checkpoints (`torch_hub_checkpoint_dirs`)
and, when absent, downloads it there with `download_checked`, which keeps the file only if its
hash matches; offline, `WeightsNotAvailableError` says where to put the file by hand. Used for
torchvision's ResNet-18 (`mtcolor.weights`) and pytorch-fid's Inception (`mtcolor.eval.inception`).
Standard library only: importing this module pulls in neither torch, TensorFlow nor JAX.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

__all__ = [
    "WeightsNotAvailableError",
    "download_checked",
    "find_hub_checkpoint",
    "torch_hub_checkpoint_dirs",
]


class DownloadHashError(ValueError):
    """A downloaded file's sha256 does not start with the prefix its name carries (deleted)."""


class WeightsNotAvailableError(FileNotFoundError):
    """A published weights file is neither in the hub cache nor downloadable (e.g. offline)."""


def torch_hub_checkpoint_dirs() -> list[Path]:
    """Where torch's hub caches checkpoints: $TORCH_HOME/hub/checkpoints (TORCH_HOME defaulting,
    as in torch, to $XDG_CACHE_HOME/torch, then ~/.cache/torch), then
    ~/.cache/torch/hub/checkpoints. The first is where a download goes."""
    default_home = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "torch"
    torch_home = Path(os.environ.get("TORCH_HOME", default_home)).expanduser()
    dirs = [
        torch_home / "hub" / "checkpoints",
        Path.home() / ".cache" / "torch" / "hub" / "checkpoints",
    ]
    return list(dict.fromkeys(dirs))


def _hash_prefix(filename: str) -> str:
    # torch.hub's convention: 'name-<sha256 prefix>.ext'.
    match = re.search(r"-([a-f0-9]{6,})\.", filename)
    if not match:
        raise ValueError(f"{filename!r} carries no sha256 prefix ('name-<hex>.ext')")
    return match.group(1)


def download_checked(url: str, directory, *, urlopen=None, timeout: float = 60.0) -> Path:
    """Download `url` into `directory`, verifying the sha256 prefix in its file name.

    Writes to a temporary file next to the target and renames it into place only after the hash
    matched, so an interrupted or corrupt download never leaves a file that looks cached.
    `urlopen` (default `urllib.request.urlopen`) is injectable for tests.
    """
    import hashlib
    import tempfile
    import urllib.parse
    import urllib.request

    urlopen = urlopen or urllib.request.urlopen
    filename = Path(urllib.parse.urlparse(url).path).name
    prefix = _hash_prefix(filename)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / filename
    fd, tmp_name = tempfile.mkstemp(prefix=f".{filename}.", suffix=".partial", dir=directory)
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        if not digest.hexdigest().startswith(prefix):
            raise DownloadHashError(
                f"downloaded {url} has sha256 {digest.hexdigest()}, which does not start with "
                f"the '{prefix}' in its name; the file was deleted"
            )
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def find_hub_checkpoint(
    url: str, *, how_to_fetch: str, pass_path_hint: str, download: bool = True, urlopen=None
) -> Path:
    """A published weights file (its name carries a sha256 prefix, torch hub style): from torch's
    hub cache (`torch_hub_checkpoint_dirs()`), else downloaded there with `download_checked`.

    Offline (or with download=False) raises `WeightsNotAvailableError` saying where the file was
    looked for, where to put it, and `how_to_fetch` it on a machine with internet access.
    """
    import urllib.parse

    filename = Path(urllib.parse.urlparse(url).path).name
    dirs = torch_hub_checkpoint_dirs()
    for directory in dirs:
        if (directory / filename).is_file():
            return directory / filename
    instructions = (
        f"Put {filename} into {dirs[0]} (or point TORCH_HOME at a directory whose "
        f"hub/checkpoints holds it), or {pass_path_hint}. To fetch it on a machine with internet "
        f"access: `curl -LO {url}` (its sha256 starts with {_hash_prefix(filename)}), or "
        f"{how_to_fetch} there and copy ~/.cache/torch/hub/checkpoints/{filename}."
    )
    searched = ", ".join(str(d) for d in dirs)
    if not download:
        raise WeightsNotAvailableError(f"{filename} not found in {searched}. {instructions}")
    try:
        logging.info("Downloading %s to %s", url, dirs[0])
        return download_checked(url, dirs[0], urlopen=urlopen)
    except OSError as e:  # URLError, timeouts, DNS failures: offline
        raise WeightsNotAvailableError(
            f"{filename} not found in {searched} and the download from {url} failed ({e}). "
            f"{instructions}"
        ) from e
