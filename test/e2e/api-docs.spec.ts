import { afterAll, beforeAll, expect, it } from '@jest/globals';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { type Browser, chromium } from 'playwright-core';
import { CHROMIUM, CHROMIUM_ARGS, describeWithBrowser } from '../support/browser.js';
import { createTestDatabase, type TestDatabase } from '../support/database.js';
import { send } from '../support/http.js';
import { type SampleProcess, startSampleApp } from '../support/sample-process.js';

const PROBLEM = 'urn:nestjs-idempotency:problem:';

interface Operation {
  parameters?: Array<{ name: string; in: string; required?: boolean }>;
  responses: Record<string, { headers?: Record<string, unknown>; content?: Record<string, { schema: any }> }>;
}

/**
 * The sample app's OpenAPI document and Swagger UI at /docs: the library documents its
 * routes because @nestjs/swagger is installed. The document is read as JSON; the UI is
 * opened in Debian's Chromium, driven by playwright-core.
 */
describeWithBrowser()('OpenAPI: the sample app at /docs', () => {
  let db: TestDatabase;
  let app: SampleProcess;
  let browser: Browser | undefined;
  let profile: string;

  beforeAll(async () => {
    db = await createTestDatabase({ migrate: false });
    app = await startSampleApp({ DATABASE_URL: db.url });
    profile = mkdtempSync(join(tmpdir(), 'chromium-profile-'));
  });

  afterAll(async () => {
    await browser?.close();
    await app?.kill();
    await db?.drop();
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  it('documents POST /payments: the key header, Idempotent-Replayed, and the problem responses', async () => {
    const document = (await send(app.url, 'GET', '/docs-json')).json as {
      paths: Record<string, Record<string, Operation>>;
    };
    const payments = document.paths['/payments'].post;
    expect(payments.parameters).toEqual(
      expect.arrayContaining([expect.objectContaining({ name: 'Idempotency-Key', in: 'header', required: true })]),
    );
    expect(Object.keys(payments.responses).sort()).toEqual(['201', '400', '409', '422', '503']);
    expect(Object.keys(payments.responses['201'].headers ?? {})).toEqual(['Idempotent-Replayed']);
    for (const status of ['409', '503'])
      expect(Object.keys(payments.responses[status].headers ?? {})).toEqual(['Retry-After']);
    const types = {
      '400': ['missing-key', 'invalid-key'],
      '409': ['request-in-progress'],
      '422': ['key-reused'],
      '503': ['store-unavailable'],
    };
    for (const [status, slugs] of Object.entries(types)) {
      const schema = payments.responses[status].content?.['application/problem+json']?.schema;
      expect(schema?.properties.type.enum).toEqual(slugs.map((slug) => PROBLEM + slug));
    }
    // Routes without @Idempotent() are untouched.
    expect(document.paths['/health'].get.parameters ?? []).toEqual([]);
    expect(Object.keys(document.paths['/health'].get.responses)).toEqual(['200']);
  });

  it('shows them in Swagger UI, in a real browser', async () => {
    browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
    const context = await browser.newContext();
    const page = await context.newPage();
    await page.goto(`${app.url}/docs`);
    // Swagger UI names the block operations-<tag>-<operationId>; the tag is the controller's.
    const operation = page.locator('[id^="operations-"][id$="-PaymentsController_create"]');
    await operation.locator('.opblock-summary').first().click();
    await operation.locator('.responses-table').first().waitFor();
    await page.screenshot({ path: process.env.DOCS_SCREENSHOT ?? join(profile, 'docs.png'), fullPage: true });

    const parameters = await operation.locator('.parameters').innerText();
    expect(parameters).toMatch(/Idempotency-Key\s*\*\s+string\s+\(header\)/);
    // Swagger UI marks a required parameter with the class, and a star.
    await expect(operation.locator('.parameter__name.required', { hasText: 'Idempotency-Key' }).count()).resolves.toBe(
      1,
    );
    const codes = await operation.locator('.responses-table .response-col_status').allInnerTexts();
    expect(codes.map((code) => code.trim())).toEqual(['Code', '201', '400', '409', '422', '503']);
    const responses = await operation.locator('.responses-wrapper').innerText();
    expect(responses).toContain('Idempotent-Replayed');
    expect(responses).toContain('Retry-After');
    expect(responses).toContain('application/problem+json');
    expect(responses).toContain(`${PROBLEM}key-reused`);
  }, 60_000);
});
