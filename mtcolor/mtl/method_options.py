"""The one check every multi-task method factory runs on its name and options, so a typo in a
config (`loss.weighting`, `loss.gradient` and their `_options`) fails with the allowed
names listed instead of a TypeError deep inside a factory."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def check_method_options(
    kind: str, name: str, options: Mapping, allowed: Mapping[str, Sequence[str]]
) -> None:
    """Raises ValueError if `name` is not a key of `allowed` or `options` has a key that
    `allowed[name]` does not list; `kind` names the family in the message ("loss weighting")."""
    if name not in allowed:
        raise ValueError(f"unknown {kind} {name!r}; expected one of {tuple(allowed)}")
    unknown = sorted(set(options) - set(allowed[name]))
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for {kind} {name!r}; allowed: {allowed[name]}"
        )
