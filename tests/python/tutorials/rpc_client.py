#!/usr/bin/env python
"""Tutorial 6, "RPC": the Fibonacci client."""
import sys
import uuid

import pika

from _common import connection_parameters, name


class FibonacciRpcClient(object):

    def __init__(self, parameters):
        self.connection = pika.BlockingConnection(parameters)

        self.channel = self.connection.channel()

        result = self.channel.queue_declare(queue='', exclusive=True)
        self.callback_queue = result.method.queue

        self.channel.basic_consume(
            queue=self.callback_queue,
            on_message_callback=self.on_response,
            auto_ack=True)

        self.response = None
        self.corr_id = None

    def on_response(self, ch, method, props, body):
        if self.corr_id == props.correlation_id:
            self.response = body

    def call(self, n):
        self.response = None
        self.corr_id = str(uuid.uuid4())
        self.channel.basic_publish(
            exchange='',
            routing_key=name('rpc_queue'),
            properties=pika.BasicProperties(
                reply_to=self.callback_queue,
                correlation_id=self.corr_id,
            ),
            body=str(n))
        while self.response is None:
            self.connection.process_data_events(time_limit=None)
        return int(self.response)


if __name__ == '__main__':
    fibonacci_rpc = FibonacciRpcClient(connection_parameters())
    for arg in sys.argv[1:] or ['30']:
        n = int(arg)
        print(f" [x] Requesting fib({n})")
        response = fibonacci_rpc.call(n)
        print(f" [.] Got {response}")
