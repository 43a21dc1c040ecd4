// The demo's --help text: plain JavaScript, so `npm run demo -- --help` answers before anything is installed.
export const HELP = `usage: npm run demo [-- options]

  Starts, on 127.0.0.1 only: a development fleet CA, mosquitto 2 (TLS 1.3, client certificates),
  the vitalseal ingest service (SQLite, software key store, HTTPS API and dashboard) and simulated
  devices that enrol with one-time tokens and stream sealed vital signs. Ctrl-C stops everything.

  --mqtts N          simulated patients over MQTTS (default 2; the second keeps its key in a TPM)
  --coaps N          simulated patients over CoAPS, CoAP over DTLS 1.3 (default 2; every second one is a
                     pulse oximeter with a pre-shared key instead of a certificate)
  --no-tpm           no TPM device (skips swtpm)
  --no-hl7           no HL7 v2 gateway device (a simulated bedside monitor sending ORU^R01 over MLLP)
  --seconds S        stop by itself after S seconds (default: run until Ctrl-C)
  --https-port P     the ingest's HTTPS port (default 8443, or a free one if taken; 0: any free port)
  --keep             keep the demo's directory (keys, databases, logs) after stopping
  --help             this text
`;
