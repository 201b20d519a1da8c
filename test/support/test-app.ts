import type { INestApplication } from '@nestjs/common';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';

export type Platform = 'express' | 'fastify';
export const PLATFORMS: Platform[] = ['express', 'fastify'];

export interface RunningApp {
  app: INestApplication;
  url: string;
  close(): Promise<void>;
}

/** Compiles a module into an app on the given platform, listening on a free port. */
export async function startApp(module: unknown, platform: Platform): Promise<RunningApp> {
  const moduleRef = await Test.createTestingModule({ imports: [module as never] }).compile();
  const app =
    platform === 'express'
      ? moduleRef.createNestApplication({ logger: ['error', 'warn'] })
      : moduleRef.createNestApplication(new FastifyAdapter(), { logger: ['error', 'warn'] });
  try {
    await app.listen(0, '127.0.0.1');
  } catch (error) {
    // A failed start-up still opened what it built (a DataSource's pool): close it.
    await app.close().catch(() => undefined);
    throw error;
  }
  const url = (await app.getUrl()).replace('[::1]', '127.0.0.1').replace('localhost', '127.0.0.1');
  return { app, url, close: () => app.close() };
}
