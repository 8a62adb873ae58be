"""Task-specific `[options]` from model.toml, checked against each task's defaults once.

A task declares its knobs as a dict of defaults; an unknown key or a value of the wrong type
is a `ValueError` that names the model and says what is accepted, raised when the task is
built (at model load), never later on a frame.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from edge.inference.modelspec import ModelSpec

_KINDS = {bool: "true or false", int: "an integer", float: "a number"}


def read_options(
    spec: ModelSpec,
    defaults: Mapping[str, Any],
    choices: Mapping[str, Collection[str]] | None = None,
) -> dict[str, Any]:
    """`spec.options` merged over `defaults`; unknown keys and mistyped values are refused.

    A float default accepts ints; a bool default accepts only booleans; `choices` restricts a
    string option to the values listed.
    """
    where = f"model {spec.name!r} (task {spec.task!r})"
    unknown = set(spec.options) - set(defaults)
    if unknown:
        known = ", ".join(f"{k} = {v!r}" for k, v in defaults.items()) or "none"
        raise ValueError(f"{where}: unknown [options] {sorted(unknown)}; known (default): {known}")
    out = dict(defaults)
    for key, value in spec.options.items():
        default = defaults[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:
            ok = isinstance(value, type(default))
        if not ok:
            raise ValueError(
                f"{where}: option {key} must be {_KINDS.get(type(default), 'a string')}, "
                f"like {default!r}; got {value!r}"
            )
        allowed = (choices or {}).get(key)
        if allowed is not None and value not in allowed:
            raise ValueError(f"{where}: option {key} must be one of {sorted(allowed)}; {value!r}")
        out[key] = value
    return out


def need_fraction(spec: ModelSpec, options: Mapping[str, Any], *keys: str) -> None:
    """Refuse options that must lie in [0, 1] (IoU and probability thresholds)."""
    for key in keys:
        if not 0.0 <= float(options[key]) <= 1.0:
            raise ValueError(
                f"model {spec.name!r}: option {key} must be between 0 and 1; got {options[key]!r}"
            )
