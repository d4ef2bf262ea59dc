"""The short run of the replicated stream chaos check (stream_chaos.py; the long one is
scripts/stream-chaos.sh): one fault of each kind while producers publish with confirms
through every node, then every member's copy is read and checked: nothing confirmed lost,
nothing phantom, no duplicates, every replica the same as the leader."""

from __future__ import annotations

import pytest

import stream_chaos


@pytest.mark.timeout(240)
def test_no_confirmed_stream_message_is_lost_under_faults(tmp_path, netns):
    result = stream_chaos.run(rounds=8, workdir=tmp_path, hold=5.0, seed=7, netns=netns)
    print(result)
    assert result["confirmed"] > 100, result
    assert result["lost"] == 0, result
    assert result["phantom"] == 0, result
    assert result["duplicates"] == 0, result
    assert result["diverged"] == [], result
