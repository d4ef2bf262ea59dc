"""x-queue-type: classic, quorum (test_quorum_queues.py) and stream (test_streams_amqp.py) are
accepted; an unknown type is a channel error (406)."""

import pytest

from helpers import channel_closed


@pytest.mark.parametrize("args", [{"x-queue-type": "classic"}, {}])
def test_classic_queue_type_is_accepted(channel, names, args):
    q = names.queue("qt")
    assert channel.queue_declare(q, arguments=args).method.queue == q
    # Absent and 'classic' are equivalent on redeclaration.
    channel.queue_declare(q, arguments={"x-queue-type": "classic"})
    channel.queue_declare(q)


def test_unknown_queue_type_is_406(channel, names):
    q = names.queue("qt")
    with channel_closed(406) as info:
        channel.queue_declare(q, arguments={"x-queue-type": "bogus"})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': "
        f"\"unsupported queue type 'bogus'\"")
