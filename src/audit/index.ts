/**
 * vitalseal/audit: an append-only, hash-chained log of key and security events with signed
 * checkpoints, and its verifier.
 */
export {
  AUDIT_OPERATIONS, NO_KEY, secretSuspicion, type AuditEventInput, type AuditOperation, type AuditResult,
} from './entry.ts';
export { AuditLog, openAuditLog, type AppendResult, type AuditLogOptions, type CheckpointPolicy } from './log.ts';
export { verifyAuditLog, type AuditProblem, type AuditProblemKind, type AuditVerifyResult, type VerifyAuditOptions } from './verify.ts';
export { auditKeyEvents, type AuditKeyEventSink, type AuditKeyEventsOptions } from './key-events.ts';
