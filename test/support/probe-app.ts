import {
  All,
  Body,
  Controller,
  type DynamicModule,
  Header,
  HttpCode,
  HttpException,
  Injectable,
  Module,
  Param,
  type PipeTransform,
  Post,
  Res,
  StreamableFile,
} from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { setTimeout as sleep } from 'node:timers/promises';
import type { PoolClient } from 'pg';
import type { EntityManager } from 'typeorm';
import {
  Idempotent,
  IdempotencyModule,
  type IdempotencyModuleOptions,
  IdempotentClient,
  IdempotentManager,
  IdempotentTransaction,
} from '../../lib/index.js';

/** How many times each probe handler ran, by route name. */
export class Calls {
  private readonly counts = new Map<string, number>();
  private running = 0;
  /** Most handlers of this app that ever ran at the same time. */
  maxConcurrent = 0;

  hit(name: string): void {
    this.counts.set(name, this.count(name) + 1);
  }

  count(name: string): number {
    return this.counts.get(name) ?? 0;
  }

  /** Marks a handler as running until the returned function is called. */
  enter(): () => void {
    this.maxConcurrent = Math.max(this.maxConcurrent, ++this.running);
    return () => void this.running--;
  }
}

interface ProbeBody {
  delayMs?: number;
  status?: number;
  crash?: boolean;
  valid?: boolean;
  [other: string]: unknown;
}

@Injectable()
class RejectInvalid implements PipeTransform {
  transform(value: ProbeBody) {
    if (value?.valid === false) throw new HttpException({ message: 'invalid body' }, 400);
    return value;
  }
}

/** Writes through the request's transaction from a service, as an application would. */
@Injectable()
class Ledger {
  constructor(private readonly transaction: IdempotentTransaction) {}

  async record(owner: string, amount: number): Promise<string> {
    const [row] = await this.transaction.manager.query(
      "INSERT INTO payments (user_id, amount, currency, status) VALUES ($1, $2, 'EUR', 'succeeded') RETURNING id",
      [owner, amount],
    );
    return row.id;
  }
}

/** A controller exercising every behaviour of the library; each handler counts its runs. */
@Controller()
class ProbeController {
  constructor(
    private readonly calls: Calls,
    private readonly ledger: Ledger,
  ) {}

  @Post('orders')
  @Idempotent()
  @Header('Location', '/orders/42')
  async order(
    @Body() body: ProbeBody,
    @Res({ passthrough: true }) response: { header(name: string, value: string): void },
  ) {
    this.calls.hit('orders');
    // Set by the handler itself (Express and Fastify both have header()): only the first response has them.
    response.header('Set-Cookie', 'session=secret');
    response.header('X-Not-Replayed', 'yes');
    await sleep(body.delayMs ?? 0);
    // Key order, non-ASCII text and floats that a JSONB round trip would not keep.
    return {
      zeta: 1,
      alpha: { b: 2.5, a: [3, 'x'] },
      text: 'Grüße, 東京 ✓',
      big: 1e21,
      small: 1.1e-7,
      n: this.calls.count('orders'),
    };
  }

  @Post('wait')
  @Idempotent({ concurrency: 'wait' })
  async wait(@Body() body: ProbeBody) {
    this.calls.hit('wait');
    const leave = this.calls.enter();
    try {
      await sleep(body.delayMs ?? 0);
      if (body.status) throw new HttpException({ message: 'failed on purpose' }, body.status);
      return { ran: this.calls.count('wait'), at: Date.now() };
    } finally {
      leave();
    }
  }

  @Post('wait-briefly')
  @Idempotent({ concurrency: 'wait', waitTimeoutMs: 300 })
  async waitBriefly(@Body() body: ProbeBody) {
    this.calls.hit('wait-briefly');
    await sleep(body.delayMs ?? 0);
    return { ran: this.calls.count('wait-briefly') };
  }

  @Post('fail')
  @Idempotent()
  fail(@Body() body: ProbeBody) {
    this.calls.hit('fail');
    if (body.crash) throw new Error('unexpected failure');
    throw new HttpException({ message: `status ${body.status}`, run: this.calls.count('fail') }, body.status ?? 500);
  }

  @Post('validated')
  @Idempotent()
  validated(@Body(RejectInvalid) body: ProbeBody) {
    this.calls.hit('validated');
    return { accepted: body };
  }

  @Post('optional')
  @Idempotent({ required: false })
  optional() {
    this.calls.hit('optional');
    return { ran: this.calls.count('optional') };
  }

  @Post('text')
  @Idempotent()
  text() {
    this.calls.hit('text');
    return `plain text run ${this.calls.count('text')}\0with a NUL`;
  }

  @Post('binary')
  @Idempotent()
  binary() {
    this.calls.hit('binary');
    return Buffer.from([0, 1, 2, 255, 254, this.calls.count('binary')]);
  }

  @Post('uint8array')
  @Idempotent()
  uint8array() {
    this.calls.hit('uint8array');
    // What pdf-lib's save() and WebCrypto return: not a Buffer (Express sends it as JSON).
    return new Uint8Array([104, 105, this.calls.count('uint8array')]);
  }

  @Post('unserialisable')
  @Idempotent()
  unserialisable() {
    this.calls.hit('unserialisable');
    // The effect happened; then the result cannot be sent (JSON has no BigInt).
    return { amount: 10n };
  }

  @All('all-methods')
  @Idempotent()
  allMethods() {
    this.calls.hit('all-methods');
    return { ran: this.calls.count('all-methods') };
  }

  @Post('tx-query/:owner')
  @Idempotent({ transactional: true })
  async transactionalQuery(@Param('owner') owner: string, @IdempotentManager() manager: EntityManager) {
    this.calls.hit('tx-query');
    await manager.query("INSERT INTO payments (user_id, amount, currency, status) VALUES ($1, 3, 'EUR', 'succeeded')", [
      owner,
    ]);
    // The handler's own statement is where the connection breaks.
    await manager.query('SELECT pg_sleep(1.5), $1::text AS marker', ['tx-query-sleep']);
    return { ran: this.calls.count('tx-query') };
  }

  /** Writes through the EntityManager and through the client, in one transaction; a nested transaction of the client's rolls back. */
  @Post('tx-client/:owner')
  @Idempotent({ transactional: true })
  async transactionalClient(
    @Param('owner') owner: string,
    @Body() body: { status?: number },
    @IdempotentManager() manager: EntityManager,
    @IdempotentClient() client: PoolClient,
  ) {
    const insert = "INSERT INTO payments (user_id, amount, currency, status) VALUES ($1, $2, 'EUR', 'succeeded')";
    await manager.query(insert, [owner, 1]);
    await client.query(insert, [owner, 2]);
    await client.query('BEGIN');
    await client.query(insert, [owner, 3]);
    await client.query('ROLLBACK');
    if (body.status) throw new HttpException('refused', body.status);
    return { done: true };
  }

  @Post('file')
  @Idempotent()
  file() {
    this.calls.hit('file');
    const content = Buffer.from(`file contents, run ${this.calls.count('file')}\n`.repeat(100));
    return new StreamableFile(content, { type: 'text/csv', disposition: 'attachment; filename="report.csv"' });
  }

  @Post('large')
  @Idempotent({ maxResponseBytes: 1000 })
  large() {
    this.calls.hit('large');
    return { data: 'x'.repeat(2000) };
  }

  @Post('empty')
  @HttpCode(204)
  @Idempotent()
  empty() {
    this.calls.hit('empty');
  }

  @Post('short-lived')
  @Idempotent({ ttlMs: 300 })
  shortLived() {
    this.calls.hit('short-lived');
    return { ran: this.calls.count('short-lived') };
  }

  @Post('with-query')
  @Idempotent({ fingerprint: { query: true, headers: ['X-Tenant'] } })
  withQuery() {
    this.calls.hit('with-query');
    return { ran: this.calls.count('with-query') };
  }

  @Post('refunds/:id')
  @Idempotent()
  refund(@Param('id') id: string) {
    this.calls.hit('refunds');
    return { refunded: id };
  }

  @Post('date')
  @Idempotent()
  date() {
    this.calls.hit('date');
    return new Date(Date.UTC(2026, 0, 1, 0, 0, this.calls.count('date')));
  }

  @Post('tx/:owner')
  @Idempotent({ transactional: true })
  async transactional(
    @Param('owner') owner: string,
    @Body() body: ProbeBody,
    @IdempotentManager() manager: EntityManager,
  ) {
    this.calls.hit('tx');
    // A nested transaction of the handler's own becomes a savepoint inside ours.
    const id = await manager.transaction((inner) =>
      inner
        .query(
          "INSERT INTO payments (user_id, amount, currency, status) VALUES ($1, 100, 'EUR', 'succeeded') RETURNING id",
          [owner],
        )
        .then((rows: Array<{ id: string }>) => rows[0].id),
    );
    await sleep(body.delayMs ?? 0);
    if (body.status) throw new HttpException({ message: `failed after writing ${id}` }, body.status);
    return { id, run: this.calls.count('tx') };
  }

  @Post('tx-wait/:owner')
  @Idempotent({ transactional: true, concurrency: 'wait', waitTimeoutMs: 5000 })
  async transactionalWait(@Param('owner') owner: string, @Body() body: ProbeBody) {
    this.calls.hit('tx-wait');
    const leave = this.calls.enter();
    try {
      const id = await this.ledger.record(owner, 200);
      await sleep(body.delayMs ?? 0);
      if (body.status) throw new HttpException({ message: 'failed on purpose' }, body.status);
      return { id, run: this.calls.count('tx-wait') };
    } finally {
      leave();
    }
  }

  @Post('tx-validated/:owner')
  @Idempotent({ transactional: true })
  transactionalValidated(@Body(RejectInvalid) body: ProbeBody) {
    this.calls.hit('tx-validated');
    return { accepted: body };
  }

  @Post('tx-dangling/:owner')
  @Idempotent({ transactional: true })
  async transactionalDangling(@Param('owner') owner: string, @IdempotentManager() manager: EntityManager) {
    this.calls.hit('tx-dangling');
    // A handler bug: a nested transaction still running when the handler returns.
    void manager
      .transaction(async (inner) => {
        await inner.query(
          "INSERT INTO payments (user_id, amount, currency, status) VALUES ($1, 1, 'EUR', 'succeeded')",
          [owner],
        );
        await sleep(300);
      })
      .catch(() => undefined);
    await sleep(50);
    return { returned: true };
  }

  @Post('policy-throws')
  @Idempotent({
    storeErrors: () => {
      throw new Error('a bug in the storage policy');
    },
  })
  policyThrows() {
    this.calls.hit('policy-throws');
    throw new HttpException({ message: 'not found' }, 404);
  }

  @Post('manager-outside')
  @Idempotent()
  managerOutside(@IdempotentManager() manager: EntityManager) {
    return { got: typeof manager };
  }

  @Post('plain')
  plain() {
    this.calls.hit('plain');
    return { ran: this.calls.count('plain') };
  }
}

/** The probe app on a database, with module options for the test at hand. */
export function probeModule(url: string, calls: Calls, options: IdempotencyModuleOptions = {}): DynamicModule {
  @Module({})
  class ProbeModule {}
  return {
    module: ProbeModule,
    imports: [
      TypeOrmModule.forRoot({ type: 'postgres', url, retryAttempts: 0 }),
      IdempotencyModule.forRoot({
        scope: (request) => String(request.headers['x-user-id'] ?? 'anonymous'),
        ...options,
      }),
    ],
    controllers: [ProbeController],
    providers: [{ provide: Calls, useValue: calls }, Ledger],
  };
}
