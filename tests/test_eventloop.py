"""The serving processes' event loop follows the `uvloop` setting (edge/process/eventloop.py):
uvloop where it is installed and asked for, asyncio's own otherwise, never an error."""

from __future__ import annotations

import asyncio
import importlib.util

import pytest

from edge.process import eventloop

pytestmark = pytest.mark.unit


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_the_setting_picks_the_loop() -> None:
    """Off is asyncio's loop; on is uvloop's where it is installed, else asyncio's."""
    assert eventloop.run(_loop_module(), use_uvloop=False).startswith("asyncio")
    on = eventloop.run(_loop_module(), use_uvloop=True)
    expected = "uvloop" if importlib.util.find_spec("uvloop") else "asyncio"
    assert on.startswith(expected)
