/**
 * The one schema both backends create. Types differ only where SQL dialects do (BLOB vs BYTEA);
 * the gap query uses window functions both SQLite (≥ 3.25) and PostgreSQL have.
 */
export function schemaStatements(dialect: 'sqlite' | 'postgres'): string[] {
  const blob = dialect === 'sqlite' ? 'BLOB' : 'BYTEA';
  const int = dialect === 'sqlite' ? 'INTEGER' : 'BIGINT';
  return [
    `CREATE TABLE IF NOT EXISTS devices (
      device_id TEXT PRIMARY KEY,
      spki_sha256 TEXT NOT NULL,
      status TEXT NOT NULL CHECK (status IN ('active', 'suspended', 'revoked')),
      enrolled_at ${int} NOT NULL,
      last_seen_at ${int},
      sealing_epoch TEXT
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
    // Only non-sensitive columns are indexed (device, time, key version).
    'CREATE INDEX IF NOT EXISTS messages_by_time ON messages (device_id, last_time)',
    'CREATE INDEX IF NOT EXISTS messages_by_key ON messages (device_id, key_version)',
    `CREATE TABLE IF NOT EXISTS data_keys (
      device_id TEXT NOT NULL,
      version INTEGER NOT NULL,
      wrapped ${blob} NOT NULL,
      kek_name TEXT NOT NULL,
      created_at ${int} NOT NULL,
      state TEXT NOT NULL CHECK (state IN ('current', 'retired', 'destroyed')),
      PRIMARY KEY (device_id, version)
    )`,
  ];
}

/** Missing ranges between 1 and the highest seq, with the placeholder style of the dialect. */
export function gapQuery(param: string): string {
  return `SELECT prev + 1 AS gap_from, seq - 1 AS gap_to FROM (
      SELECT seq, LAG(seq, 1, 0) OVER (ORDER BY seq) AS prev FROM messages WHERE device_id = ${param}
    ) AS s WHERE seq - prev > 1 ORDER BY seq`;
}
