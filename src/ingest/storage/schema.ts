/**
 * The one schema both backends create. Types differ only where SQL dialects do (BLOB vs BYTEA);
 * the gap query uses window functions both SQLite (≥ 3.25) and PostgreSQL have.
 *
 * Only non-sensitive columns are indexed: device id, sequence, time range, key version, token hashes.
 * Readings exist only inside `messages.ciphertext`.
 */
export const SCHEMA_VERSION = 1;

export function schemaStatements(dialect: 'sqlite' | 'postgres'): string[] {
  const blob = dialect === 'sqlite' ? 'BLOB' : 'BYTEA';
  const int = dialect === 'sqlite' ? 'INTEGER' : 'BIGINT';
  return [
    `CREATE TABLE IF NOT EXISTS meta (
      name TEXT PRIMARY KEY,
      value ${int} NOT NULL
    )`,
    `INSERT INTO meta (name, value) VALUES ('schema-version', ${SCHEMA_VERSION}) ON CONFLICT (name) DO NOTHING`,
    `INSERT INTO meta (name, value) VALUES ('registry-version', 0) ON CONFLICT (name) DO NOTHING`,
    `CREATE TABLE IF NOT EXISTS devices (
      device_id TEXT PRIMARY KEY,
      credential TEXT NOT NULL CHECK (credential IN ('certificate', 'psk')),
      credential_sha256 TEXT NOT NULL,
      status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
      enrolled_at ${int} NOT NULL,
      status_changed_at ${int},
      cert_serial TEXT,
      cert_not_after ${int},
      last_seen_at ${int},
      transport TEXT,
      suite TEXT,
      sealing_epoch TEXT,
      epoch_started_at ${int},
      rejections ${int} NOT NULL DEFAULT 0,
      last_rejection_at ${int},
      last_rejection_reason TEXT
    )`,
    `CREATE TABLE IF NOT EXISTS messages (
      device_id TEXT NOT NULL,
      seq ${int} NOT NULL,
      received_at ${int} NOT NULL,
      first_time ${int} NOT NULL,
      last_time ${int} NOT NULL,
      key_version INTEGER NOT NULL,
      nonce ${blob} NOT NULL,
      ciphertext ${blob} NOT NULL,
      PRIMARY KEY (device_id, seq)
    )`,
    'CREATE INDEX IF NOT EXISTS messages_by_time ON messages (device_id, last_time)',
    // Every index is one more random insert per message. The re-key work list walks the primary
    // key with a cursor instead (messagesBelowKeyVersion); databases made before that lose the index.
    'DROP INDEX IF EXISTS messages_by_key',
    // The key hierarchy's records (src/keystore/hierarchy/types.ts): DEKs wrapped by the KEK.
    `CREATE TABLE IF NOT EXISTS wrapped_keys (
      key_id TEXT NOT NULL,
      version INTEGER NOT NULL,
      kek_name TEXT NOT NULL,
      wrapped ${blob} NOT NULL,
      created_at ${int} NOT NULL,
      PRIMARY KEY (key_id, version)
    )`,
    `CREATE TABLE IF NOT EXISTS rekey_state (
      key_id TEXT PRIMARY KEY,
      target_version INTEGER NOT NULL,
      started_at ${int} NOT NULL,
      updated_at ${int} NOT NULL,
      rewritten ${int} NOT NULL,
      resumed INTEGER NOT NULL
    )`,
    `CREATE TABLE IF NOT EXISTS enrol_tokens (
      token_sha256 TEXT PRIMARY KEY,
      device_id TEXT NOT NULL,
      created_at ${int} NOT NULL,
      expires_at ${int} NOT NULL,
      used_at ${int}
    )`,
    `CREATE TABLE IF NOT EXISTS api_tokens (
      token_sha256 TEXT PRIMARY KEY,
      name TEXT NOT NULL,
      role TEXT NOT NULL CHECK (role IN ('reader', 'admin')),
      created_at ${int} NOT NULL,
      expires_at ${int},
      revoked_at ${int}
    )`,
    'CREATE INDEX IF NOT EXISTS api_tokens_by_name ON api_tokens (name)',
    `CREATE TABLE IF NOT EXISTS leases (
      name TEXT PRIMARY KEY,
      owner TEXT NOT NULL,
      expires_at ${int} NOT NULL
    )`,
  ];
}

/** Missing ranges between 1 and the highest seq, with the placeholder style of the dialect. */
export function gapQuery(param: string): string {
  return `SELECT prev + 1 AS gap_from, seq - 1 AS gap_to FROM (
      SELECT seq, LAG(seq, 1, 0) OVER (ORDER BY seq) AS prev FROM messages WHERE device_id = ${param}
    ) AS s WHERE seq - prev > 1 ORDER BY seq`;
}

/** Tables `isEmpty` looks at and backups cover. */
export const DATA_TABLES = ['devices', 'messages', 'wrapped_keys', 'api_tokens'] as const;

/**
 * Moves a device's last-seen fields forward (never back: a late duplicate does not rewind them).
 * `p` names a parameter in the dialect's style; `greatest` is MAX (SQLite) or GREATEST (PostgreSQL).
 */
export const TOUCH_DEVICE_SQL = (p: (name: string) => string, greatest: string): string => `UPDATE devices SET
  transport = CASE WHEN COALESCE(last_seen_at, 0) <= ${p('seen')} THEN ${p('transport')} ELSE transport END,
  suite = CASE WHEN COALESCE(last_seen_at, 0) <= ${p('seen')} THEN ${p('suite')} ELSE suite END,
  sealing_epoch = CASE WHEN COALESCE(last_seen_at, 0) <= ${p('seen')} AND ${p('epoch')} IS NOT NULL THEN ${p('epoch')} ELSE sealing_epoch END,
  epoch_started_at = CASE WHEN COALESCE(last_seen_at, 0) <= ${p('seen')} AND ${p('epoch')} IS NOT NULL THEN ${p('epochStart')} ELSE epoch_started_at END,
  last_seen_at = ${greatest}(COALESCE(last_seen_at, 0), ${p('seen')})
  WHERE device_id = ${p('device')}`;
