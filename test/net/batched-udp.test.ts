/**
 * Batched UDP (src/net/batched-udp) over real loopback sockets: datagram boundaries, order and
 * addresses survive segmentation offload on send and coalescing on receive, against node:dgram
 * peers and against itself; refusals are counted, never thrown; addresses read back as node:dgram
 * writes them.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createSocket, type Socket } from 'node:dgram';
import { networkInterfaces } from 'node:os';
import { after, describe, it } from 'node:test';
import { BatchedUdpSocket, batchedUdpStatus, type ReceivedDatagram } from '../../src/net/batched-udp/socket.ts';
import { decodeSockaddr, encodeSockaddr } from '../../src/net/batched-udp/sockaddr.ts';
import { TransportError } from '../../src/util/errors.ts';

/** An address of this host other than loopback, if it has one. */
const EXTERNAL_IPV4 = Object.values(networkInterfaces()).flat().find((a) => a !== undefined && !a.internal && a.family === 'IPv4')?.address;
const EXPECTED = process.platform === 'linux' && (process.arch === 'x64' || process.arch === 'arm64');
const open: { close(): unknown }[] = [];
after(async () => {
  for (const s of open) await s.close();
});

/** A datagram whose bytes say which one it is: [index, index, …]. */
function datagram(index: number, size: number): Uint8Array {
  return new Uint8Array(size).fill(index & 0xff);
}

async function batched(onDatagrams: (batch: ReceivedDatagram[]) => void = () => undefined, host = '127.0.0.1'): Promise<BatchedUdpSocket> {
  const s = await BatchedUdpSocket.open({ host, onDatagrams });
  open.push(s);
  return s;
}

async function nodeSocket(type: 'udp4' | 'udp6' = 'udp4', host = '127.0.0.1'): Promise<Socket> {
  const s = createSocket(type);
  await new Promise<void>((resolve) => s.bind(0, host, resolve));
  open.push({
    close: () => new Promise<void>((r) => {
      try {
        s.close(() => r());
      } catch {
        r(); // a test closed it already
      }
    }),
  });
  return s;
}

function until(condition: () => boolean, what: string, ms = 3000): Promise<void> {
  return new Promise((resolve, reject) => {
    const end = Date.now() + ms;
    const check = () => {
      if (condition()) resolve();
      else if (Date.now() > end) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(check, 5);
    };
    check();
  });
}

describe('batched UDP: addresses', () => {
  it('encodes and reads back IPv4 and IPv6 addresses in the text forms node:dgram uses', () => {
    const cases: [string, string][] = [
      ['127.0.0.1', '127.0.0.1'],
      ['::1', '::1'],
      ['2001:db8::1', '2001:db8::1'],
      ['2001:0db8:0000:0000:0000:0000:0000:0001', '2001:db8::1'],
      ['1:0:0:2:0:0:0:3', '1:0:0:2::3'],
      ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
      ['::ffff:10.1.2.3', '::ffff:10.1.2.3'],
      ['fe80::', 'fe80::'],
      ['::', '::'],
    ];
    for (const [input, text] of cases) {
      const bytes = encodeSockaddr(input, 5684);
      assert.deepEqual(decodeSockaddr(bytes, bytes.length), { address: text, port: 5684 }, input);
    }
    assert.throws(() => encodeSockaddr('localhost', 1), TypeError);
    assert.throws(() => encodeSockaddr('127.0.0.1', 70_000), TypeError);
    assert.equal(decodeSockaddr(new Uint8Array(16), 16), undefined, 'family 0 is not an address');
    assert.equal(decodeSockaddr(new Uint8Array(8), 8), undefined, 'too short');
  });
});

describe('batched UDP over loopback', { skip: EXPECTED ? false : 'batched UDP is 64-bit Linux only' }, () => {
  it('is available on this platform', () => {
    assert.equal(batchedUdpStatus().available, true, batchedUdpStatus().reason);
  });

  it('a run of equal datagrams goes out as one segmented message and arrives as the same datagrams, in order (node:dgram receiver)', async () => {
    const got: Buffer[] = [];
    const receiver = await nodeSocket();
    receiver.on('message', (m) => got.push(m));
    const sender = await batched();
    const out = Array.from({ length: 40 }, (_, i) => ({ data: datagram(i, i === 39 ? 300 : 1100), address: '127.0.0.1', port: receiver.address().port }));
    sender.send(out);
    await until(() => got.length === 40, '40 datagrams');
    got.forEach((m, i) => assert.deepEqual(new Uint8Array(m), out[i]?.data, `datagram ${i}`));
    assert.equal(sender.stats.datagramsSent, 40);
    assert.equal(sender.stats.segmentedMessages, 1, 'one message with UDP_SEGMENT');
    assert.equal(sender.sendOffload, true);
  });

  it('a batched receiver gets coalesced datagrams back as the exact datagrams, with the sender address', async () => {
    const got: ReceivedDatagram[] = [];
    const receiver = await batched((b) => got.push(...b));
    assert.equal(receiver.receiveOffload, true);
    const sender = await batched();
    const to = receiver.address();
    const out = Array.from({ length: 64 }, (_, i) => ({ data: datagram(i, 1000), address: to.address, port: to.port }));
    sender.send(out);
    await until(() => got.length === 64, '64 datagrams');
    got.forEach((d, i) => {
      assert.deepEqual(d.data, out[i]?.data, `datagram ${i}`);
      assert.deepEqual(d.from, sender.address());
    });
    assert.ok(receiver.stats.coalescedReceives >= 1, 'the kernel handed at least one coalesced buffer');
    assert.equal(receiver.stats.datagramsReceived, 64);
  });

  it('after a burst, the socket is read again before the wait, and later datagrams still arrive once that read finds nothing', async () => {
    const got: number[] = [];
    const receiver = await batched((b) => got.push(...b.map((d) => d.data[0] as number)));
    const sender = await nodeSocket();
    const to = receiver.address();
    // A burst, then quiet (the re-read finds nothing and the wait is armed), then single datagrams
    // spaced out: each must still wake the socket.
    for (let i = 0; i < 16; i++) sender.send(datagram(i, 100), to.port, to.address);
    await until(() => got.length === 16, 'the burst');
    for (let i = 16; i < 20; i++) {
      await new Promise((r) => setTimeout(r, 30));
      sender.send(datagram(i, 100), to.port, to.address);
      await until(() => got.length === i + 1, `datagram ${i} after a quiet spell`);
    }
    assert.deepEqual(got, Array.from({ length: 20 }, (_, i) => i));
  });

  it('a connected socket sends from the address its route gives, not from loopback', { skip: EXTERNAL_IPV4 === undefined ? 'no non-loopback IPv4 address here' : false }, async () => {
    const ip = EXTERNAL_IPV4 as string;
    const receiver = await nodeSocket('udp4', ip);
    const got: { address: string }[] = [];
    receiver.on('message', (_m, from) => got.push(from));
    const s = await BatchedUdpSocket.open({ connect: { address: ip, port: receiver.address().port }, onDatagrams: () => undefined });
    open.push(s);
    s.send([{ data: datagram(1, 10), address: '', port: 0 }]);
    await until(() => got.length === 1, 'the datagram');
    assert.equal(got[0]?.address, ip, 'a peer elsewhere could answer it');
  });

  it('a process with an open socket, its wait armed, still exits on process.exit()', async () => {
    const script = `import { BatchedUdpSocket } from ${JSON.stringify(new URL('../../src/net/batched-udp/socket.ts', import.meta.url).href)};
await BatchedUdpSocket.open({ host: '127.0.0.1', onDatagrams: () => undefined });
setTimeout(() => process.exit(7), 50);`;
    const child = spawn(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script], { stdio: 'ignore' });
    const code = await new Promise<number | null>((resolve) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        resolve(null);
      }, 20_000);
      child.once('exit', (c) => {
        clearTimeout(timer);
        resolve(c);
      });
    });
    assert.equal(code, 7, 'exited with its own code rather than hanging on the blocked wait');
  });

  it('a socket closed by its own handler is not read again, and the other sockets keep receiving', async () => {
    let batches = 0;
    const closing = await BatchedUdpSocket.open({ host: '127.0.0.1', onDatagrams: () => {
      batches++;
      void closing.close();
    } });
    const other: number[] = [];
    const receiver = await batched((b) => other.push(...b.map((d) => d.data[0] as number)));
    const sender = await nodeSocket();
    const a = closing.address();
    const b = receiver.address();
    for (let i = 0; i < 8; i++) sender.send(datagram(i, 100), a.port, a.address);
    await until(() => batches === 1, 'the first batch');
    for (let i = 0; i < 8; i++) sender.send(datagram(i, 100), a.port, a.address);
    for (let i = 0; i < 4; i++) sender.send(datagram(i, 100), b.port, b.address);
    await until(() => other.length === 4, 'the other socket\'s datagrams');
    await new Promise((r) => setTimeout(r, 50));
    assert.equal(batches, 1, 'nothing read after close');
  });

  it('mixed sizes and two peers in one send: each peer gets exactly its datagrams, in order', async () => {
    const a: ReceivedDatagram[] = [];
    const b: Buffer[] = [];
    const ra = await batched((batch) => a.push(...batch));
    const rb = await nodeSocket();
    rb.on('message', (m) => b.push(m));
    const sender = await batched();
    const sizes = [1200, 1200, 1200, 80, 1200, 7, 7, 0, 1200, 500, 600, 1200];
    const out = sizes.map((size, i) => ({ data: datagram(i, size), address: '127.0.0.1', port: i % 3 === 0 ? rb.address().port : ra.address().port }));
    sender.send(out);
    const forA = out.filter((_, i) => i % 3 !== 0);
    const forB = out.filter((_, i) => i % 3 === 0);
    await until(() => a.length === forA.length && b.length === forB.length, 'both peers');
    a.forEach((d, i) => assert.deepEqual(d.data, forA[i]?.data, `a ${i}`));
    b.forEach((m, i) => assert.deepEqual(new Uint8Array(m), forB[i]?.data, `b ${i}`));
  });

  it('receives from node:dgram senders with their addresses, IPv4 and IPv6', async () => {
    const got: ReceivedDatagram[] = [];
    const r4 = await batched((b) => got.push(...b));
    const s4 = await nodeSocket();
    s4.send(datagram(1, 33), r4.address().port, '127.0.0.1');
    await until(() => got.length === 1, 'the IPv4 datagram');
    assert.deepEqual(got[0]?.from, { address: '127.0.0.1', port: s4.address().port });
    const r6 = await batched((b) => got.push(...b), '::1');
    const s6 = await nodeSocket('udp6', '::1');
    s6.send(datagram(2, 44), r6.address().port, '::1');
    await until(() => got.length === 2, 'the IPv6 datagram');
    assert.deepEqual(got[1]?.from, { address: '::1', port: s6.address().port });
    assert.deepEqual(got[1]?.data, datagram(2, 44));
  });

  it('a datagram larger than UDP allows is dropped and counted; the others still go', async () => {
    const got: Buffer[] = [];
    const receiver = await nodeSocket();
    receiver.on('message', (m) => got.push(m));
    const sender = await batched();
    const port = receiver.address().port;
    sender.send([{ data: datagram(1, 70_000), address: '127.0.0.1', port }, { data: datagram(2, 10), address: '127.0.0.1', port }]);
    await until(() => got.length === 1, 'the small datagram');
    assert.deepEqual(new Uint8Array(got[0] as Buffer), datagram(2, 10));
    assert.equal(sender.stats.sendDropped, 1);
  });

  it('a connected socket whose peer is gone keeps working: the ICMP refusal is consumed, not thrown', async () => {
    const gone = await nodeSocket();
    const port = gone.address().port;
    await new Promise<void>((r) => gone.close(() => r()));
    const got: ReceivedDatagram[] = [];
    const s = await BatchedUdpSocket.open({ connect: { address: '127.0.0.1', port }, onDatagrams: (b) => got.push(...b) });
    open.push(s);
    for (let i = 0; i < 5; i++) {
      s.send([{ data: datagram(i, 20), address: '', port: 0 }]);
      await new Promise((r) => setTimeout(r, 10));
    }
    assert.equal(s.stats.datagramsSent + s.stats.sendDropped, 5, 'every send accounted for');
    assert.equal(got.length, 0);
  });

  it('binding a port in use is a TransportError named by its errno; close is idempotent and later sends do nothing', async () => {
    const first = await batched();
    await assert.rejects(BatchedUdpSocket.open({ host: '127.0.0.1', port: first.address().port, onDatagrams: () => undefined }), (e: unknown) => e instanceof TransportError && e.code === 'EADDRINUSE');
    const closing = first.close();
    assert.equal(first.close(), closing);
    await closing;
    first.send([{ data: datagram(1, 1), address: '127.0.0.1', port: 9 }]);
    assert.equal(first.stats.datagramsSent, 0);
  });

  it('a host name to connect to is looked up', async () => {
    const got: Buffer[] = [];
    const receiver = await nodeSocket();
    receiver.on('message', (m) => got.push(m));
    const s = await BatchedUdpSocket.open({ connect: { address: 'localhost', port: receiver.address().port }, onDatagrams: () => undefined });
    open.push(s);
    s.send([{ data: datagram(5, 5), address: '', port: 0 }]);
    await until(() => got.length === 1, 'the datagram');
  });
});
