"""The one error of the config, and the helpers the sections' checks share."""

from __future__ import annotations

import difflib


class ConfigError(ValueError):
    """A config problem, stated with the key to change."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def did_you_mean(value, choices) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


# metadata of a field whose value may change between a checkpoint and its resumed run without changing what the run
# computes (a whole section when the field holds one): rl/config/run.py `harmless_on_resume`
ANY_ON_RESUME = {"resume": "any"}
