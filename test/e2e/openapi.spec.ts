import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import { Controller, HttpCode, type INestApplication, Post, Put } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { ApiResponse, DocumentBuilder, SwaggerModule } from '@nestjs/swagger';
import { Idempotent, IdempotencyModule, MemoryIdempotencyStore } from '../../lib/index.js';

@Controller('orders')
@Idempotent({ concurrency: 'reject' })
class OrdersController {
  @Post()
  @ApiResponse({ status: 201, description: 'The order', headers: { Location: { schema: { type: 'string' } } } })
  create() {
    return { id: 1 };
  }

  @Put(':id')
  @HttpCode(200)
  @Idempotent({ required: false })
  @ApiResponse({ status: 409, description: 'Our own conflict' })
  replace() {
    return { id: 1 };
  }

  @Post('plain')
  @Idempotent({ required: true })
  plain() {
    return {};
  }
}

@Controller('free')
class FreeController {
  @Post()
  create() {
    return {};
  }
}

type Operation = {
  parameters?: Array<{ name: string; required?: boolean }>;
  responses: Record<string, { description?: string; headers?: Record<string, unknown> }>;
};

describe('OpenAPI documentation of idempotent routes', () => {
  let app: INestApplication;
  let paths: Record<string, Record<string, Operation>>;

  beforeAll(async () => {
    app = await NestFactory.create(
      {
        module: class OpenApiApp {},
        imports: [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore, headerName: 'X-Request-Key' })],
        controllers: [OrdersController, FreeController],
      },
      { logger: false },
    );
    paths = SwaggerModule.createDocument(app, new DocumentBuilder().build()).paths as typeof paths;
  });

  afterAll(async () => app?.close());

  it("uses the module's header name and the route's required flag", () => {
    expect(paths['/orders'].post.parameters).toEqual([
      expect.objectContaining({ name: 'X-Request-Key', required: true }),
    ]);
    expect(paths['/orders/{id}'].put.parameters).toEqual(
      expect.arrayContaining([expect.objectContaining({ name: 'X-Request-Key', required: false })]),
    );
  });

  it("adds Idempotent-Replayed to the route's own success response, and keeps the statuses it documents", () => {
    const created = paths['/orders'].post.responses['201'];
    expect(created.description).toBe('The order');
    expect(Object.keys(created.headers ?? {}).sort()).toEqual(['Idempotent-Replayed', 'Location']);
    const replace = paths['/orders/{id}'].put.responses;
    expect(Object.keys(replace).sort()).toEqual(['200', '400', '409', '422', '503']);
    expect(replace['409'].description).toBe('Our own conflict');
    expect(replace['400'].description).toBe('The X-Request-Key header is malformed.');
  });

  it('leaves routes without @Idempotent() alone', () => {
    expect(paths['/free'].post.parameters ?? []).toEqual([]);
    expect(Object.keys(paths['/free'].post.responses)).toEqual(['201']);
  });

  it('documents a route once, however many applications are created in the process', async () => {
    const again = await NestFactory.create(
      {
        module: class OpenApiAgain {},
        imports: [IdempotencyModule.forRoot({ store: MemoryIdempotencyStore, headerName: 'X-Request-Key' })],
        controllers: [OrdersController],
      },
      { logger: false },
    );
    try {
      const document = SwaggerModule.createDocument(again, new DocumentBuilder().build());
      expect((document.paths['/orders'].post!.parameters ?? []).length).toBe(1);
    } finally {
      await again.close();
    }
  });
});
