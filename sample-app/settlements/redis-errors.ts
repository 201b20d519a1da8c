import type { Logger } from '@nestjs/common';

/**
 * BullMQ queues and workers emit 'error' for every failed reconnection while Redis is
 * down (and without a listener Node would end the process). Each distinct error is
 * logged once in a row, so that an outage is a line, not a flood.
 */
export class RedisErrorLog {
  private last?: string;

  constructor(private readonly logger: Logger) {}

  readonly log = (error: Error): void => {
    if (error.message === this.last) return;
    this.last = error.message;
    this.logger.warn(`Redis: ${error.message}`);
  };
}
