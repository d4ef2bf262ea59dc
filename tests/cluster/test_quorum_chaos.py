"""The short run of the quorum queue chaos check (chaos.py; the long one is
scripts/quorum-chaos.sh): a few faults of each kind while producers publish with confirms and
consumers acknowledge, then a history check: nothing confirmed lost, nothing phantom."""

from __future__ import annotations

import pytest

import chaos


@pytest.mark.timeout(240)
def test_no_confirmed_message_is_lost_under_faults(tmp_path, netns):
    result = chaos.run(rounds=5, workdir=tmp_path, hold=2.0, seed=7, netns=netns,
                       faults=["kill-leader", "pause-leader", "isolate-leader", "kill-all",
                               "kill-follower"])
    print(result)
    assert result["confirmed"] > 100, result
    assert result["lost"] == 0, result
    assert result["phantom"] == 0, result
