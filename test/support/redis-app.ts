import {
  Body,
  Controller,
  type DynamicModule,
  Headers,
  HttpException,
  Inject,
  Module,
  Param,
  ParseIntPipe,
  Post,
} from '@nestjs/common';
import { randomUUID } from 'node:crypto';
import { setTimeout as sleep } from 'node:timers/promises';
import { Redis } from 'ioredis';
import {
  Idempotent,
  IdempotencyModule,
  type IdempotencyModuleOptions,
  type RedisClient,
  type RedisStoreOptions,
} from '../../lib/index.js';

/**
 * A test application on the Redis store, with no TypeORM and no PostgreSQL: each handler
 * counts its runs in Redis (`<prefix>runs:<route>:<idempotency key>`), so that "ran once"
 * holds across processes, and sleeps `X-Delay-Ms` to stay in flight.
 */
export const RUNS = Symbol('RUNS');

export interface RedisAppSettings {
  redisUrl: string;
  /** The store's connection, when not `redisUrl` (a Redis Cluster client); the test closes it. */
  connection?: RedisClient;
  /** The store's key prefix; the run counters live under it too. */
  prefix: string;
  options?: IdempotencyModuleOptions;
  store?: Omit<RedisStoreOptions, 'connection' | 'keyPrefix'>;
  /** Where the run counters live, when not on the store's Redis (which a test may restart). */
  runsUrl?: string;
}

interface Runs {
  client: Redis;
  prefix: string;
}

/** The key of a route's run counter for one idempotency key. */
export const runsKey = (prefix: string, route: string, key: string) => `${prefix}runs:${route}:${key}`;

@Controller()
class RedisProbeController {
  constructor(@Inject(RUNS) private readonly runs: Runs) {}

  private async ran(route: string, key: string | undefined, delay: string | undefined): Promise<number> {
    const count = await this.runs.client.incr(runsKey(this.runs.prefix, route, key ?? 'none'));
    if (delay) await sleep(Number(delay));
    return count;
  }

  @Post('charges')
  @Idempotent({ concurrency: 'wait' })
  async charge(
    @Body() body: { amount?: number },
    @Headers('idempotency-key') key?: string,
    @Headers('x-delay-ms') delay?: string,
  ) {
    const run = await this.ran('charges', key, delay);
    return { id: randomUUID(), amount: body.amount ?? null, run, pid: process.pid };
  }

  @Post('emails')
  @Idempotent({ concurrency: 'reject' })
  async email(
    @Body() body: { to?: string },
    @Headers('idempotency-key') key?: string,
    @Headers('x-delay-ms') delay?: string,
  ) {
    const run = await this.ran('emails', key, delay);
    return { id: randomUUID(), to: body.to ?? null, run };
  }

  @Post('fail/:status')
  @Idempotent()
  async fail(@Param('status', ParseIntPipe) status: number, @Headers('idempotency-key') key?: string) {
    const run = await this.ran(`fail-${status}`, key, undefined);
    throw new HttpException({ message: `failed with ${status}`, run }, status);
  }
}

@Module({})
class RedisProbeModule {}

export function redisAppModule({
  redisUrl,
  connection,
  prefix,
  options = {},
  store = {},
  runsUrl,
}: RedisAppSettings): DynamicModule {
  return {
    module: RedisProbeModule,
    imports: [
      IdempotencyModule.forRoot({
        scope: (request: { headers: Record<string, string | undefined> }) =>
          request.headers['x-user-id'] ?? 'anonymous',
        ...options,
        redis: { connection: connection ?? redisUrl, keyPrefix: prefix, ...store },
      }),
    ],
    controllers: [RedisProbeController],
    providers: [
      {
        provide: RUNS,
        useFactory: () => ({ client: new Redis(runsUrl ?? redisUrl), prefix }),
      },
      {
        provide: 'RUNS_CLOSER',
        inject: [RUNS],
        useFactory: (runs: Runs) => ({ onApplicationShutdown: () => runs.client.quit() }),
      },
    ],
  };
}
