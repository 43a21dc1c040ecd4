#!/usr/bin/env node
// `npm run demo`: the ingest service plus a fleet of simulated devices. Not built yet: this says so
// plainly, and points at what runs today, instead of pretending.
process.stderr.write(`npm run demo: not built yet.
It arrives with the device agent and the ingest service (DTLS 1.3 and MQTTS transports, key stores).

What runs today:
  npm test                                        every test (PostgreSQL is started on a free loopback port)
  npm run bench                                   benchmarks with their baselines
  npx tsx examples/seal-a-second-of-vitals.ts     seal a second of simulated vitals and open it again
  npx vitalseal --help                            the operators command: cose, keys, audit, pki, provision
`);
process.exit(3);
