#!/usr/bin/env python
"""Tutorial 4, "Routing": emit a log with a severity (direct exchange)."""
import sys

import pika

from _common import connection_parameters, name

connection = pika.BlockingConnection(connection_parameters())
channel = connection.channel()

channel.exchange_declare(exchange=name('direct_logs'), exchange_type='direct')

severity = sys.argv[1] if len(sys.argv) > 1 else 'info'
message = ' '.join(sys.argv[2:]) or 'Hello World!'
channel.basic_publish(
    exchange=name('direct_logs'), routing_key=severity, body=message)
print(f" [x] Sent {severity}:{message}")
connection.close()
