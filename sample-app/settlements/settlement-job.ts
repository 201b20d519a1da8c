/** The queue that settlement jobs go through (BullMQ queue names cannot contain ':'). */
export const SETTLEMENT_QUEUE = 'settlement';

/** The data of a settlement job: the tick it settles, and the interval before it. */
export interface SettlementJob {
  /** The tick's scheduled time, ISO 8601. */
  tick: string;
  intervalMs: number;
}

/** One job per tick, whoever enqueues it: BullMQ adds a job id only once. */
export function settlementJobId(tick: Date): string {
  return `settlement-${tick.getTime()}`;
}
