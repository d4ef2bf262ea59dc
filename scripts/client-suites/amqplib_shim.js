// Pier client-suites shim for amqplib's tests (loaded with `node --require` by
// scripts/client-suites.sh). No test or assertion is changed:
//
// 1. The tests connect to amqplib's default address (amqp://localhost, amqp://[::1]:
//    port 5672) or to $URL. Connections to port 5672 on a loopback address go to the port
//    of the broker under test ($URL), on the loopback address the test chose (IPv4 or
//    IPv6); for a broker on another host, to that host.
// 2. Tests named in $PIER_AMQPLIB_EXCLUDE (a JSON list; see excluded.tsv) are reported as
//    skipped instead of run. Node 20 has no --test-skip-pattern.
const net = require('node:net');
const test = require('node:test');

const target = new URL(process.env.URL);
const port = Number(target.port || 5672);
const host = target.hostname.replace(/^\[|\]$/g, '');
const loopback = ['localhost', '127.0.0.1', '::1'];
for (const name of ['connect', 'createConnection']) {
  const original = net[name];
  net[name] = function (...args) {
    const o = args[0];
    if (o && typeof o === 'object' && Number(o.port) === 5672 &&
        (o.host === undefined || loopback.includes(o.host))) {
      args[0] = { ...o, port, host: loopback.includes(host) ? o.host : host };
    }
    return original.apply(this, args);
  };
}

const excluded = new Set(JSON.parse(process.env.PIER_AMQPLIB_EXCLUDE || '[]'));
const it = test.it;
const filtered = function (name, ...rest) {
  if (excluded.has(name)) return it.skip(`${name} (excluded, see scripts/client-suites/excluded.tsv)`, ...rest);
  return it.call(this, name, ...rest);
};
Object.assign(filtered, it);
test.it = filtered;
