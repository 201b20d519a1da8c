import { All, Body, Controller, Get, Injectable, Module, Param, Post, SetMetadata, Version } from '@nestjs/common';
import { TypeOrmModule } from '@nestjs/typeorm';
import { setTimeout as sleep } from 'node:timers/promises';
import { Idempotent, IdempotencyModule, MemoryIdempotencyStore } from '../../lib/index.js';
import { Calls } from './probe-app.js';
import { type Platform, startApp } from './test-app.js';

/**
 * Controllers for test/e2e/route-shapes.spec.ts: route shapes in which one handler function
 * serves several routes, or several handlers serve one path. Every handler counts its runs.
 */

export const calls = new Calls();

/** One method, inherited by two controllers with different class-level options. */
abstract class InheritedCreate {
  @Post()
  @Idempotent()
  async create(@Body() body: { delayMs?: number }) {
    const name = this.constructor.name;
    calls.hit(name);
    await sleep(body.delayMs ?? 0);
    return { controller: name, run: calls.count(name) };
  }
}

@Controller('a')
export class AController extends InheritedCreate {}

@Controller('b')
@Idempotent({ concurrency: 'wait' })
export class BController extends InheritedCreate {}

const counted = (name: string) => {
  calls.hit(name);
  return { handler: name, run: calls.count(name) };
};

@Controller('orders/:id/refund')
export class RefundController {
  @Post()
  @Idempotent()
  refund(@Param('id') id: string) {
    return { ...counted('refund'), id };
  }
}

/** Class-wide @Idempotent(): the state-changing routes are guarded, the reads pass through. */
@Controller('docs')
@Idempotent()
export class DocsController {
  @Get()
  read() {
    return counted('docs-get');
  }

  @Post()
  write() {
    return counted('docs-post');
  }

  @All('any')
  any() {
    return counted('docs-all');
  }
}

// Host-based routing: admin first, since ':tenant.example.test' also matches 'admin.example.test'.
@Controller({ path: 'hosted', host: 'admin.example.test' })
export class AdminHostController {
  @Post()
  @Idempotent()
  create() {
    return counted('host-admin');
  }
}

@Controller({ path: 'hosted', host: ':tenant.example.test' })
export class TenantHostController {
  @Post()
  @Idempotent()
  create(@Body() body: unknown) {
    return { ...counted('host-tenant'), body };
  }
}

@Controller('items')
class AdminItems {
  @Post()
  @Idempotent()
  create() {
    return counted('admin-items');
  }
}

@Module({ controllers: [AdminItems] })
export class AdminModule {}

@Controller('items')
class PublicItems {
  @Post()
  @Idempotent()
  create() {
    return counted('public-items');
  }
}

@Module({ controllers: [PublicItems] })
export class PublicModule {}

@Controller('versioned')
export class VersionedController {
  @Post()
  @Version('1')
  @Idempotent()
  v1() {
    return counted('v1');
  }

  @Post()
  @Version('2')
  @Idempotent()
  v2() {
    return counted('v2');
  }
}

// Decorated methods that no HTTP request reaches: refused at start-up.
@Controller('bad')
export class SafeMethodDecorated {
  @Get()
  @Idempotent()
  list() {
    return [];
  }
}

@Injectable()
export class DecoratedService {
  @Idempotent()
  charge() {
    return 'charged';
  }
}

// `SetMetadata('message', ...)` writes what @nestjs/websockets' @SubscribeMessage() writes.
const SubscribeMessage = (event: string) => SetMetadata('message', event);

@Controller()
export class WebsocketHandlerDecorated {
  @SubscribeMessage('charge')
  @Idempotent()
  charge() {
    return 'charged';
  }
}

@Controller()
@Idempotent()
export class WebsocketHandlerUnderClass {
  @Post('http-route')
  route() {
    return {};
  }

  @SubscribeMessage('refund')
  refund() {
    return 'refunded';
  }
}

export function appModule(url: string, controllers: unknown[], imports: unknown[] = []) {
  @Module({
    imports: [
      TypeOrmModule.forRoot({ type: 'postgres', url, retryAttempts: 0 }),
      IdempotencyModule.forRoot({ scope: () => 'tester' }),
      ...(imports as never[]),
    ],
    controllers: controllers as never[],
  })
  class ShapesModule {}
  return ShapesModule;
}

export async function bootError(
  platform: Platform,
  controllers: unknown[],
  providers: unknown[] = [],
): Promise<string> {
  @Module({
    imports: [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore })],
    controllers: controllers as never[],
    providers: providers as never[],
  })
  class BadModule {}
  try {
    const running = await startApp(BadModule, platform);
    await running.close();
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error('the application started');
}
