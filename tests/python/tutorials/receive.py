#!/usr/bin/env python
"""Tutorial 1, "Hello World!": the consumer."""
import os
import sys

import pika

from _common import connection_parameters, name


def main():
    connection = pika.BlockingConnection(connection_parameters())
    channel = connection.channel()

    channel.queue_declare(queue=name('hello'))

    def callback(ch, method, properties, body):
        print(f" [x] Received {body}")

    channel.basic_consume(queue=name('hello'), on_message_callback=callback, auto_ack=True)

    print(' [*] Waiting for messages. To exit press CTRL+C')
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
