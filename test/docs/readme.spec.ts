import { afterAll, beforeAll, describe, expect, it } from '@jest/globals';
import type { INestApplication } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import { mkdir, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import ts from 'typescript';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { post } from '../support/http.js';

/**
 * Every TypeScript block of the README is a complete file that compiles against the
 * library as users import it ('nestjs-idempotency-postgres'), and the quick start runs.
 * Documentation that no longer compiles fails here, not in a reader's editor.
 */
const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const WORK = join(ROOT, '.build-readme');
const PACKAGE = 'nestjs-idempotency-postgres';

async function readmeBlocks(): Promise<Array<{ line: number; code: string }>> {
  const text = await readFile(join(ROOT, 'README.md'), 'utf8');
  const blocks: Array<{ line: number; code: string }> = [];
  const fence = /^```ts\n([\s\S]*?)^```$/gm;
  for (let match = fence.exec(text); match; match = fence.exec(text)) {
    blocks.push({ line: text.slice(0, match.index).split('\n').length, code: match[1] });
  }
  return blocks;
}

describe('README', () => {
  let blocks: Array<{ line: number; code: string; file: string }>;

  beforeAll(async () => {
    await rm(WORK, { recursive: true, force: true });
    await mkdir(WORK, { recursive: true });
    blocks = [];
    for (const [index, block] of (await readmeBlocks()).entries()) {
      const file = join(WORK, `block-${index + 1}.ts`);
      await writeFile(file, block.code);
      blocks.push({ ...block, file });
    }
  });
  afterAll(async () => {
    await rm(WORK, { recursive: true, force: true });
  });

  it('has TypeScript examples, and each compiles as written', () => {
    expect(blocks.length).toBeGreaterThanOrEqual(4);
    const program = ts.createProgram(
      blocks.map((block) => block.file),
      {
        target: ts.ScriptTarget.ES2022,
        module: ts.ModuleKind.NodeNext,
        moduleResolution: ts.ModuleResolutionKind.NodeNext,
        strict: true,
        experimentalDecorators: true,
        emitDecoratorMetadata: true,
        useDefineForClassFields: false,
        skipLibCheck: true,
        noEmit: true,
        lib: ['lib.es2024.d.ts'],
        types: ['node'],
        // As the package resolves for its users, but from the sources.
        paths: {
          [PACKAGE]: [join(ROOT, 'lib/index.ts')],
          [`${PACKAGE}/testing`]: [join(ROOT, 'lib/testing/index.ts')],
        },
      },
    );
    const problems = ts.getPreEmitDiagnostics(program).map((diagnostic) => {
      const block = blocks.find((candidate) => candidate.file === diagnostic.file?.fileName);
      const at =
        diagnostic.file && diagnostic.start !== undefined
          ? diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start)
          : undefined;
      const where =
        block && at ? `README.md line ${block.line + at.line + 1}` : (diagnostic.file?.fileName ?? 'program');
      return `${where}: ${ts.flattenDiagnosticMessageText(diagnostic.messageText, '\n')}`;
    });
    expect(problems).toEqual([]);
  });

  describe('the quick start, run as written', () => {
    let db: TestDatabase;
    let app: INestApplication;
    let url: string;

    beforeAll(async () => {
      db = await createTestDatabase({ migrate: false });
      const quickStart = blocks[0];
      const compiled = ts.transpileModule(quickStart.code, {
        compilerOptions: {
          target: ts.ScriptTarget.ES2022,
          module: ts.ModuleKind.ES2022,
          experimentalDecorators: true,
          emitDecoratorMetadata: true,
          useDefineForClassFields: false,
        },
      }).outputText;
      const library = pathToFileURL(join(ROOT, 'dist/lib/index.js')).href;
      const file = join(WORK, 'quick-start.js');
      await writeFile(file, compiled.replaceAll(`'${PACKAGE}'`, `'${library}'`));
      // The quick start reads DATABASE_URL when its module is evaluated (TypeOrmModule.forRoot).
      const serverUrl = process.env.DATABASE_URL;
      process.env.DATABASE_URL = db.url;
      try {
        const { AppModule } = await import(pathToFileURL(file).href);
        app = await NestFactory.create(AppModule, { logger: ['error', 'warn'] });
        await app.listen(0, '127.0.0.1');
      } finally {
        process.env.DATABASE_URL = serverUrl;
      }
      url = (await app.getUrl()).replace('[::1]', '127.0.0.1').replace('localhost', '127.0.0.1');
    });
    afterAll(async () => {
      await app?.close();
      await db?.drop();
    });

    it('runs once per key, replays to a retry, and refuses what the README says it refuses', async () => {
      const headers = { 'x-api-key': 'demo-key' };
      const body = { amount: 1000, currency: 'EUR' };
      const first = await post(url, '/payments', { key: 'order-1', body, headers });
      const retry = await post(url, '/payments', { key: 'order-1', body, headers });
      expect(first.status).toBe(201);
      expect(first.json).toMatchObject({ amount: 1000, currency: 'EUR', status: 'succeeded' });
      expect(retry.status).toBe(201);
      expect(retry.headers.get('idempotent-replayed')).toBe('true');
      expect(retry.text).toBe(first.text);
      expect((await post(url, '/payments', { key: 'order-1', body: { ...body, amount: 5 }, headers })).status).toBe(
        422,
      );
      expect((await post(url, '/payments', { body, headers })).status).toBe(400);
      expect((await post(url, '/payments', { key: 'order-2', body })).status).toBe(401);
      const { rows } = await db.pool.query('SELECT scope, route, status FROM idempotency_keys');
      expect(rows).toEqual([{ scope: 'client-1', route: '/payments', status: 'completed' }]);
    });
  });
});
