#!/usr/bin/env python
"""Tutorial 2, "Work queues": the task producer."""
import sys

import pika

from _common import connection_parameters, name

connection = pika.BlockingConnection(connection_parameters())
channel = connection.channel()

channel.queue_declare(queue=name('task_queue'), durable=True)

message = ' '.join(sys.argv[1:]) or "Hello World!"
channel.basic_publish(
    exchange='',
    routing_key=name('task_queue'),
    body=message,
    properties=pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent
    ))
print(f" [x] Sent {message}")
connection.close()
