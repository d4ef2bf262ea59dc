#!/usr/bin/env python
"""Tutorial 6, "RPC": the Fibonacci server."""
import pika

from _common import connection_parameters, name


def fib(n):
    if n == 0:
        return 0
    elif n == 1:
        return 1
    else:
        return fib(n - 1) + fib(n - 2)


def on_request(ch, method, props, body):
    n = int(body)

    print(f" [.] fib({n})")
    response = fib(n)

    ch.basic_publish(exchange='',
                     routing_key=props.reply_to,
                     properties=pika.BasicProperties(correlation_id=props.correlation_id),
                     body=str(response))
    ch.basic_ack(delivery_tag=method.delivery_tag)


def serve(parameters, ready=None, stop=None):
    """Run the server loop; ``ready``/``stop`` are optional threading.Events
    (used when the test-suite runs the server in a thread)."""
    connection = pika.BlockingConnection(parameters)
    channel = connection.channel()
    channel.queue_declare(queue=name('rpc_queue'))
    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=name('rpc_queue'), on_message_callback=on_request)
    print(" [x] Awaiting RPC requests", flush=True)
    if stop is None:
        channel.start_consuming()
        return
    if ready is not None:
        ready.set()
    while not stop.is_set():
        connection.process_data_events(time_limit=0.1)
    connection.close()


if __name__ == '__main__':
    try:
        serve(connection_parameters())
    except KeyboardInterrupt:
        print('Interrupted')
