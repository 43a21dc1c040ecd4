/**
 * The Merkle tree hash of RFC 6962 §2.1 (Certificate Transparency) over a backup's records, with
 * SHA-256: a leaf is H(0x00 || record), an interior node H(0x01 || left || right), and a list of n
 * entries splits at the largest power of two below n. The 0x00/0x01 prefixes keep a leaf from ever
 * being taken for an interior node (second-preimage resistance).
 *
 * Built incrementally (records arrive one by one, in archive order) with O(log n) memory.
 *
 * @example
 *   const m = new MerkleTree();
 *   for (const r of records) m.add(r);
 *   m.root();   // 32 bytes; MTH({}) = SHA-256("") for an empty archive
 */
import { createHash } from 'node:crypto';

function h(...parts: Uint8Array[]): Uint8Array {
  const x = createHash('sha256');
  for (const p of parts) x.update(p);
  return new Uint8Array(x.digest());
}

const LEAF = Uint8Array.of(0x00);
const NODE = Uint8Array.of(0x01);

export function leafHash(record: Uint8Array): Uint8Array {
  return h(LEAF, record); // RFC 6962 §2.1: MTH({d(0)}) = SHA-256(0x00 || d(0))
}

export function nodeHash(left: Uint8Array, right: Uint8Array): Uint8Array {
  return h(NODE, left, right); // RFC 6962 §2.1: SHA-256(0x01 || MTH(D[0:k]) || MTH(D[k:n]))
}

/** MTH over leaf hashes, by the definition (for tests and small lists). */
export function merkleRootOfLeaves(leaves: readonly Uint8Array[]): Uint8Array {
  if (leaves.length === 0) return h(); // RFC 6962 §2.1: the hash of an empty list is SHA-256 of the empty string
  if (leaves.length === 1) return leaves[0] as Uint8Array;
  let k = 1;
  while (k * 2 < leaves.length) k *= 2;
  return nodeHash(merkleRootOfLeaves(leaves.slice(0, k)), merkleRootOfLeaves(leaves.slice(k)));
}

/**
 * Incremental MTH: `stack` holds the roots of complete subtrees of decreasing size (a binary
 * counter); `root()` folds them right to left, which is exactly RFC 6962's split at the largest
 * power of two.
 */
export class MerkleTree {
  readonly #stack: { hash: Uint8Array; size: number }[] = [];
  #count = 0;

  get count(): number {
    return this.#count;
  }

  add(record: Uint8Array): void {
    let node = { hash: leafHash(record), size: 1 };
    for (;;) {
      const top = this.#stack[this.#stack.length - 1];
      if (top === undefined || top.size !== node.size) break;
      this.#stack.pop();
      node = { hash: nodeHash(top.hash, node.hash), size: top.size * 2 };
    }
    this.#stack.push(node);
    this.#count++;
  }

  root(): Uint8Array {
    if (this.#stack.length === 0) return h();
    let acc = (this.#stack[this.#stack.length - 1] as { hash: Uint8Array }).hash;
    for (let i = this.#stack.length - 2; i >= 0; i--) acc = nodeHash((this.#stack[i] as { hash: Uint8Array }).hash, acc);
    return acc;
  }
}
