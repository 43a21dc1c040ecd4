export type { FullPolicy, QueuedMessage, QueueLimits, QueueStats, QueueStore } from './types.ts';
export { DEFAULT_QUEUE_LIMITS } from './types.ts';
export { openSegmentQueue, SegmentQueue, type FsyncPolicy, type RecoveryReport, type SegmentQueueOptions } from './segment-queue.ts';
export { MemoryQueue, type MemoryQueueOptions } from './memory-queue.ts';
export { crc32c } from './crc32c.ts';
