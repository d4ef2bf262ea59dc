"""x-queue-type: classic and stream are accepted (streams: test_streams_amqp.py); quorum is not
implemented by Pier yet and is refused with a channel error (406) that says so, instead of
silently creating a classic queue."""

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


@pytest.mark.pier_only
@pytest.mark.parametrize("kind", ["quorum"])
def test_quorum_is_refused_on_the_channel(connection, names, kind):
    q = names.queue("qt")
    ch = connection.channel()
    with channel_closed(406) as info:
        ch.queue_declare(q, durable=True, arguments={"x-queue-type": kind})
    assert info["exc"].reply_text == (
        f"PRECONDITION_FAILED - invalid arg 'x-queue-type' for queue '{q}' in vhost '/': "
        f"queue type '{kind}' is not supported by Pier yet; only 'classic' queues are available")
    # Only the channel closed: the connection carries on, and nothing was created.
    other = connection.channel()
    with channel_closed(404):
        other.queue_declare(q, passive=True)
