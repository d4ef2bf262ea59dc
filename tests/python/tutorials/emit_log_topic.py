#!/usr/bin/env python
"""Tutorial 5, "Topics": emit a log with a routing key (topic exchange)."""
import sys

import pika

from _common import connection_parameters, name

connection = pika.BlockingConnection(connection_parameters())
channel = connection.channel()

channel.exchange_declare(exchange=name('topic_logs'), exchange_type='topic')

routing_key = sys.argv[1] if len(sys.argv) > 2 else 'anonymous.info'
message = ' '.join(sys.argv[2:]) or 'Hello World!'
channel.basic_publish(
    exchange=name('topic_logs'), routing_key=routing_key, body=message)
print(f" [x] Sent {routing_key}:{message}")
connection.close()
