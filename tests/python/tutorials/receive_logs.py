#!/usr/bin/env python
"""Tutorial 3, "Publish/Subscribe": the log receiver (exclusive server-named queue)."""
import os
import sys

import pika

from _common import connection_parameters, name


def main():
    connection = pika.BlockingConnection(connection_parameters())
    channel = connection.channel()

    channel.exchange_declare(exchange=name('logs'), exchange_type='fanout')

    result = channel.queue_declare(queue='', exclusive=True)
    queue_name = result.method.queue
    print(f" [*] Queue {queue_name}")

    channel.queue_bind(exchange=name('logs'), queue=queue_name)

    print(' [*] Waiting for logs. To exit press CTRL+C')

    def callback(ch, method, properties, body):
        print(f" [x] {body}")

    channel.basic_consume(
        queue=queue_name, on_message_callback=callback, auto_ack=True)

    channel.start_consuming()


if __name__ == '__main__':
    try:
        main()
    except KeyboardInterrupt:
        print('Interrupted')
        try:
            sys.exit(0)
        except SystemExit:
            os._exit(0)
