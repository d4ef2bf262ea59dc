#!/usr/bin/env python
"""Tutorial 3, "Publish/Subscribe": the log emitter (fanout)."""
import sys

import pika

from _common import connection_parameters, name

connection = pika.BlockingConnection(connection_parameters())
channel = connection.channel()

channel.exchange_declare(exchange=name('logs'), exchange_type='fanout')

message = ' '.join(sys.argv[1:]) or "info: Hello World!"
channel.basic_publish(exchange=name('logs'), routing_key='', body=message)
print(f" [x] Sent {message}")
connection.close()
