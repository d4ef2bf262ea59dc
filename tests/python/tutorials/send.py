#!/usr/bin/env python
"""Tutorial 1, "Hello World!": the producer."""
import pika

from _common import connection_parameters, name

connection = pika.BlockingConnection(connection_parameters())
channel = connection.channel()

channel.queue_declare(queue=name('hello'))

channel.basic_publish(exchange='', routing_key=name('hello'), body='Hello World!')
print(" [x] Sent 'Hello World!'")
connection.close()
