import { type ArgumentsHost, Catch, type ExceptionFilter, Logger } from '@nestjs/common';
import type { RmqContext } from '@nestjs/microservices';
import { EMPTY, type Observable } from 'rxjs';
import { IdempotencyKeyReuseError, InvalidIdempotencyInputError, MissingMessageKeyError } from '../../lib/index.js';
import { messageIdOf, nack } from './rmq-message.js';

/** A message that no retry can process: dropped (dead-lettered, if the queue has a dead-letter exchange). */
export class UnprocessableMessageError extends Error {
  override readonly name = 'UnprocessableMessageError';
}

/** How long a failed message waits before it is handed back to the queue, so that an outage is not a busy loop. */
const REQUEUE_DELAY_MS = 1000;

/**
 * Settles a message whose handler did not complete (with `noAck: false`, nothing else
 * would: it would stay unacknowledged until the connection closes). Failures that a retry
 * may cure (the database unreachable, a duplicate still in progress past its wait) are
 * requeued after a pause; messages that can never be processed are rejected.
 */
@Catch()
export class RequeueFilter implements ExceptionFilter {
  private readonly logger = new Logger('Receipts');

  catch(error: unknown, host: ArgumentsHost): Observable<never> {
    const context = host.switchToRpc().getContext<RmqContext>();
    const what = `${context.getPattern()} ${String(messageIdOf(context))}`;
    const reason = error instanceof Error ? error.message : String(error);
    if (isPermanent(error)) {
      this.logger.error(`${what}: rejected, it can never be processed: ${reason}`);
      nack(context, false);
    } else {
      this.logger.warn(`${what}: not processed (${reason}); requeued in ${REQUEUE_DELAY_MS} ms`);
      setTimeout(() => nack(context, true), REQUEUE_DELAY_MS).unref();
    }
    return EMPTY;
  }
}

function isPermanent(error: unknown): boolean {
  return (
    error instanceof UnprocessableMessageError ||
    error instanceof MissingMessageKeyError ||
    error instanceof InvalidIdempotencyInputError ||
    error instanceof IdempotencyKeyReuseError
  );
}
