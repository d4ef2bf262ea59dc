#!/usr/bin/env python
"""Tutorial 2, "Work queues": the worker.

Sleeps one second per dot in the message body, like the official tutorial;
``WORKER_SECONDS_PER_DOT`` (environment) scales that so tests can run a
fast and a slow worker side by side.
"""
import os
import sys
import time

import pika

from _common import connection_parameters, name

SECONDS_PER_DOT = float(os.environ.get('WORKER_SECONDS_PER_DOT', '1'))


def main():
    connection = pika.BlockingConnection(connection_parameters())
    channel = connection.channel()

    channel.queue_declare(queue=name('task_queue'), durable=True)
    print(' [*] Waiting for messages. To exit press CTRL+C')

    def callback(ch, method, properties, body):
        print(f" [x] Received {body.decode()}")
        time.sleep(body.count(b'.') * SECONDS_PER_DOT)
        print(" [x] Done")
        ch.basic_ack(delivery_tag=method.delivery_tag)

    channel.basic_qos(prefetch_count=1)
    channel.basic_consume(queue=name('task_queue'), on_message_callback=callback)

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
