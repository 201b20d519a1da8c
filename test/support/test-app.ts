import type { INestApplication, NestApplicationOptions } from '@nestjs/common';
import { FastifyAdapter } from '@nestjs/platform-fastify';
import { Test } from '@nestjs/testing';

export type Platform = 'express' | 'fastify';
export const PLATFORMS: Platform[] = ['express', 'fastify'];

export interface RunningApp {
  app: INestApplication;
  url: string;
  close(): Promise<void>;
}

/** What a test may change about the application it starts; every field is optional. */
export interface AppSetup {
  /** Options of the Nest application (e.g. `rawBody: true`). */
  options?: NestApplicationOptions;
  /** Options of the Fastify instance (e.g. `bodyLimit`); ignored on Express. */
  fastify?: ConstructorParameters<typeof FastifyAdapter>[0];
  /** Runs before `listen`: a global prefix, versioning, body parsers. */
  configure?(app: INestApplication, platform: Platform): void | Promise<void>;
}

/** Compiles a module into an app on the given platform, listening on a free port. */
export async function startApp(module: unknown, platform: Platform, setup: AppSetup = {}): Promise<RunningApp> {
  const moduleRef = await Test.createTestingModule({ imports: [module as never] }).compile();
  const options: NestApplicationOptions = { logger: ['error', 'warn'], ...setup.options };
  const app =
    platform === 'express'
      ? moduleRef.createNestApplication(options)
      : moduleRef.createNestApplication(new FastifyAdapter(setup.fastify), options);
  try {
    await setup.configure?.(app, platform);
    await app.listen(0, '127.0.0.1');
  } catch (error) {
    // A failed start-up still opened what it built (a DataSource's pool): close it.
    await app.close().catch(() => undefined);
    throw error;
  }
  const url = (await app.getUrl()).replace('[::1]', '127.0.0.1').replace('localhost', '127.0.0.1');
  return { app, url, close: () => app.close() };
}
