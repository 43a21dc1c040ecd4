/**
 * The ingest's MQTT listener: a member of the broker's shared subscription
 * (`$share/<sharedGroup>/vitals/+/v1`, MQTT v5 §4.8.2) that hands every message to
 * `IngestService.accept` and acknowledges it only once the outcome is final (docs/ingest.md,
 * "Wiring the listeners"):
 *
 *   MQTT v5 over TLS 1.3 with the ingest's client certificate (its CN is the broker username),
 *   Clean Start 0 and a session expiry, QoS 1 subscription, acknowledgement by hand
 *   (createMqttsSubscriber: PUBACKs in arrival order, handlers concurrent up to receiveMaximum);
 *
 *   PUBLISH vitals/<id>/v1 → accept({ payload, contentFormat, peer: { kind: 'broker', deviceId: <id> } })
 *     accepted, duplicate  → PUBACK 0x00                      (stored once)
 *     rejected             → PUBACK 0x87 / 0x99 / 0x80        (refused for good; counted and audited)
 *     unavailable          → no PUBACK: the connection is re-made after a back-off and the broker
 *                            delivers it again (mqttShouldAck)
 *
 * The device id is the topic's second level: the broker authenticated the device by its
 * certificate and its access rules let it publish under its own id only; the service then binds
 * the sealed message to that id. Connection losses are retried with back-off (250 ms doubling to
 * 30 s, jittered); the listener's own TLS failures are counted as handshake failures with the alert
 * involved. A revocation in the registry reaches the broker through `mqtt.crlReload`
 * (broker-crl.ts). `stop()` stops taking messages, lets running ones finish and be acknowledged
 * (`mqtt.drainSeconds`), then disconnects; the runtime closes the core only after that.
 *
 * @example
 *   const running = await startIngest(cfg, { env, selfTest, log, listeners: { mqtt: mqttListener } });
 */
import { createPrivateKey, type KeyObject } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { alertFor } from '../../dtls/errors.ts';
import { readPrivateFile } from '../../keystore/private-file.ts';
import { parseCertificate } from '../../pki/certificate.ts';
import { commonNameOf } from '../../pki/name.ts';
import { pemDecode } from '../../pki/pem.ts';
import { inProcessTls, type TlsConnector } from '../../transport/mqtts/connector.ts';
import { createMqttsSubscriber, type IngestHandler, type MqttsSubscriber } from '../../transport/mqtts/subscriber.ts';
import { tlsAlertName, trustFromPem } from '../../transport/mqtts/tls.ts';
import { ApiMisuse, CertificateError, PeerIncompatible, TransportError, UplinkRejected, VitalsealError } from '../../util/errors.ts';
import type { MqttListenerConfig } from '../config.ts';
import type { IngestCore } from '../core.ts';
import { mqttShouldAck, uplinkRejectReason, type BrokerPeer } from '../outcome.ts';
import type { ListenerFactory } from '../runtime.ts';
import type { IngestLogger, IngestService } from '../service.ts';
import { BrokerCrlReloader } from './broker-crl.ts';

/** What the posture shows for MQTT devices: the device's own TLS hop ends at the broker. */
export const BROKER_SUITE = 'TLSv1.3 via broker';

/** The MQTT listener as the runtime starts it. */
export const mqttListener: ListenerFactory<MqttListenerConfig> = {
  start: (core, config, log) => startMqttListener(core, config, log),
};

export interface RunningMqttListener {
  readonly subscriber: MqttsSubscriber;
  stop(): Promise<void>;
}

/**
 * The alert behind a failed connection of the listener, for `handshake_failures_total`: the one our
 * side sends for its verdict on the broker's chain, or the one the broker sent (our certificate
 * refused, no common version). Undefined for failures that are not TLS (refused TCP, CONNACK).
 */
export function handshakeAlert(e: VitalsealError): string | undefined {
  if (e instanceof CertificateError) return alertFor(e);
  const alert = tlsAlertName(e);
  if (alert !== undefined) return alert;
  if (e instanceof PeerIncompatible && e.code === 'tls-negotiation') return 'handshake_failure';
  return undefined;
}

/** The handler: one accept() per message, its outcome as the subscriber's resolve / throw contract. */
export function acceptHandler(service: IngestService): IngestHandler {
  return async (m) => {
    const peer: BrokerPeer = { kind: 'broker', deviceId: m.deviceId, transport: 'mqtts', suite: BROKER_SUITE };
    const outcome = await service.accept({ payload: m.payload, contentFormat: m.contentFormat, peer });
    if (!mqttShouldAck(outcome)) {
      // Not a refusal: no PUBACK, so the broker delivers it again (to this or another instance).
      throw new TransportError('ingest-unavailable', `a message from ${m.deviceId} was not taken; the broker delivers it again`);
    }
    switch (outcome.status) {
      case 'accepted':
      case 'duplicate':
        return;
      case 'rejected':
        throw new UplinkRejected(uplinkRejectReason(outcome.reason), `refused (${outcome.reason})`);
      case 'unavailable':
        throw new TransportError('ingest-unavailable', 'unreachable: mqttShouldAck is false for unavailable');
      default: {
        const never: never = outcome;
        throw new TypeError(`unknown outcome ${String(never)}`);
      }
    }
  };
}

function readText(path: string, field: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    throw new ApiMisuse('invalid-config', `${field}: cannot read ${path}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
  }
}

/** The client certificate (its CN: the broker username) and the TLS connector over it. */
async function clientTls(cfg: MqttListenerConfig, core: IngestCore): Promise<{ tls: TlsConnector; username: string }> {
  let trust;
  try {
    trust = trustFromPem(readText(cfg.caFile, 'mqtt.caFile'));
  } catch (e) {
    if (e instanceof ApiMisuse) throw e;
    throw new ApiMisuse('invalid-config', `mqtt.caFile: ${cfg.caFile} holds no usable CA certificate (${e instanceof Error ? e.message : String(e)})`);
  }
  const certChainPem = readText(cfg.certFile, 'mqtt.certFile');
  const leaf = pemDecode(certChainPem, 'CERTIFICATE')[0];
  if (leaf === undefined) throw new ApiMisuse('invalid-config', `mqtt.certFile: ${cfg.certFile} holds no certificate`);
  const subject = parseCertificate(leaf.der).subject;
  const username = commonNameOf(subject) ?? subject.text;
  const keyBytes = await readPrivateFile(cfg.keyFile, { maxBytes: 64 * 1024, what: 'MQTT client key (mqtt.keyFile)' });
  let privateKey: KeyObject;
  try {
    privateKey = createPrivateKey({ key: Buffer.from(keyBytes), format: 'pem' });
  } catch {
    throw new ApiMisuse('invalid-config', `mqtt.keyFile: ${cfg.keyFile} is not an unencrypted PEM private key`);
  } finally {
    keyBytes.fill(0);
  }
  return { tls: inProcessTls({ certChainPem, privateKey, trust, clock: core.clock }), username };
}

export async function startMqttListener(core: IngestCore, cfg: MqttListenerConfig, log: IngestLogger): Promise<RunningMqttListener> {
  const service = core.service;
  if (service === undefined) throw new ApiMisuse('no-static-key', 'the MQTT listener needs the static key: run `vitalseal ingest keygen` first');
  const { tls, username } = await clientTls(cfg, core);
  const subscription = `$share/${cfg.sharedGroup}/${cfg.topic}`;
  const where = { broker: `${cfg.host}:${cfg.port}`, clientId: cfg.clientId, subscription };
  const metrics = core.metrics;

  const sub = createMqttsSubscriber({
    host: cfg.host,
    port: cfg.port,
    serverName: cfg.serverName,
    tls,
    clientId: cfg.clientId,
    subscription,
    receiveMaximum: cfg.receiveMaximum,
    sessionExpirySeconds: cfg.sessionExpirySeconds,
    handler: acceptHandler(service),
  });
  const tlsFailure = (error: VitalsealError) => {
    const alert = handshakeAlert(error);
    if (alert !== undefined) service.recordHandshakeFailure('mqtts', alert);
  };
  sub.on('connected', ({ sessionPresent }) => {
    metrics.mqttSubscribed.set(1);
    log.info({ ...where, username, sessionPresent }, 'MQTT listener subscribed');
  });
  sub.on('disconnected', ({ reason }) => {
    metrics.mqttSubscribed.set(0);
    metrics.mqttDisconnects.inc();
    log.warn({ ...where, reason }, 'MQTT listener lost the broker; reconnecting');
  });
  sub.on('connectFailed', ({ error, retryInMs }) => {
    tlsFailure(error);
    log.warn({ ...where, code: error.code, err: error.message, retryInMs }, 'MQTT listener could not connect; retrying');
  });
  // A misconfigured device repeats its mistake with every message: log the first few per minute.
  let logWindow = { start: 0, logged: 0, suppressed: 0 };
  sub.on('refused', (r) => {
    if (r.byHandler) return; // accept() has counted and audited it
    // Never reached accept(): not a vitals/<id>/v1 topic, or not a COSE content type.
    metrics.rejected.inc({ reason: r.code === 0x99 ? 'unsupported-format' : 'malformed' });
    const now = core.clock.now();
    if (now - logWindow.start >= 60_000) {
      if (logWindow.suppressed > 0) log.warn({ ...where, suppressed: logWindow.suppressed }, 'more MQTT messages were refused before the ingest path');
      logWindow = { start: now, logged: 0, suppressed: 0 };
    }
    if (logWindow.logged < 10) {
      logWindow.logged++;
      log.warn({ ...where, deviceId: r.deviceId, reason: r.reason }, 'MQTT message refused before the ingest path');
    } else {
      logWindow.suppressed++;
    }
  });

  const reloader = cfg.crlReload === undefined ? undefined : new BrokerCrlReloader({
    config: cfg.crlReload, log, onResult: (ok) => metrics.brokerCrlReloads.inc({ result: ok ? 'ok' : 'failed' }),
  });
  const offCrl = core.registry.onCrlChange((info) => {
    if (reloader === undefined) {
      log.warn({ crlNumber: info.crlNumber }, 'CRL regenerated; mqtt.crlReload is not configured, so the broker accepts the revoked certificate until it reloads its CRL');
      return;
    }
    void reloader.reload(info);
  });
  const crlPath = core.registry.crlPath;
  // A revocation made while no instance ran (vitalseal ingest devices revoke) reaches the broker now.
  if (reloader !== undefined) await reloader.reload(crlPath === undefined ? {} : { crlPath }, { onlyIfChanged: true });

  let stopping = false;
  const started = sub.start();
  let onFirstFailure = (): void => undefined;
  const firstFailure = new Promise<void>((resolve) => {
    onFirstFailure = () => resolve();
    sub.once('connectFailed', onFirstFailure);
  });
  try {
    const first = await Promise.race([started.then(() => 'subscribed' as const), firstFailure.then(() => 'retrying' as const)])
      .finally(() => sub.off('connectFailed', onFirstFailure));
    if (first === 'retrying') {
      log.warn(where, 'the broker is not reachable yet: the MQTT listener keeps trying in the background');
      started.catch((e: unknown) => {
        if (stopping) return;
        if (e instanceof VitalsealError) tlsFailure(e);
        log.error({ ...where, err: e instanceof Error ? e.message : String(e) }, 'the MQTT listener gave up: the broker refused it; fix the cause and restart the service');
      });
    }
  } catch (e) {
    // Refused for good (our certificate, the broker's chain, the subscription): stop the start.
    if (e instanceof VitalsealError) tlsFailure(e);
    offCrl();
    await sub.close({ drainMs: 0 }).catch(() => undefined);
    log.error({ ...where, err: e instanceof Error ? e.message : String(e) }, 'the MQTT listener could not start');
    throw e;
  }

  let stopped: Promise<void> | undefined;
  return {
    subscriber: sub,
    stop() {
      stopped ??= (async () => {
        stopping = true;
        offCrl();
        await sub.close({ drainMs: cfg.drainSeconds * 1000 });
        await reloader?.idle();
        metrics.mqttSubscribed.set(0);
        log.info({ ...where, ...sub.counters() }, 'MQTT listener stopped');
      })();
      return stopped;
    },
  };
}
