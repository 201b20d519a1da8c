import { describe, expect, it } from '@jest/globals';
import { BadRequestException, HttpException, type ExecutionContext } from '@nestjs/common';
import { DEFAULT_REPLAY_HEADERS, type ResolvedRouteOptions } from '../../lib/idempotency.options.js';
import { resolveRouteOptions, validateModuleOptions, validateOptions } from '../../lib/options-resolution.js';

const context = {} as ExecutionContext;

describe('resolveRouteOptions', () => {
  it('fills every option with its documented default', () => {
    const options = resolveRouteOptions();
    expect(options).toMatchObject({
      required: true,
      concurrency: 'reject',
      waitTimeoutMs: 10_000,
      leaseMs: 30_000,
      ttlMs: 86_400_000,
      fingerprint: { query: true, headers: [] },
      replayHeaders: [...DEFAULT_REPLAY_HEADERS],
      maxResponseBytes: 1_048_576,
      headerName: 'Idempotency-Key',
      maxKeyLength: 255,
      retryAfterSeconds: 1,
    });
    expect(typeof options.storeErrors).toBe('function');
    expect(typeof options.scope).toBe('function');
  });

  it('lets later sources override earlier ones', () => {
    const options = resolveRouteOptions(
      { leaseMs: 5_000, ttlMs: 60_000, required: false },
      { leaseMs: 6_000 },
      undefined,
      { concurrency: 'wait' },
    );
    expect(options).toMatchObject({ leaseMs: 6_000, ttlMs: 60_000, required: false, concurrency: 'wait' });
  });

  it('never lets undefined override', () => {
    const options = resolveRouteOptions(
      { leaseMs: 5_000, required: false },
      { leaseMs: undefined, required: undefined, concurrency: undefined },
    );
    expect(options).toMatchObject({ leaseMs: 5_000, required: false, concurrency: 'reject' });
  });

  it('keeps falsy values that are not undefined', () => {
    expect(resolveRouteOptions({ required: false }).required).toBe(false);
    expect(resolveRouteOptions({ leaseMs: 0 }).leaseMs).toBe(0);
  });

  it('lower-cases fingerprint and replay header names', () => {
    const options = resolveRouteOptions({
      fingerprint: { query: true, headers: ['X-Tenant-Id'] },
      replayHeaders: ['Content-Type', 'X-Request-ID'],
    });
    expect(options.fingerprint).toEqual({ query: true, headers: ['x-tenant-id'] });
    expect(options.replayHeaders).toEqual(['content-type', 'x-request-id']);
  });

  it('fills a partial fingerprint option from the defaults', () => {
    expect(resolveRouteOptions({ fingerprint: { query: false } }).fingerprint).toEqual({ query: false, headers: [] });
    expect(resolveRouteOptions({ fingerprint: { headers: ['X-A'] } }).fingerprint).toEqual({
      query: true,
      headers: ['x-a'],
    });
  });

  // An explicit `undefined` inside the nested option once overrode the default (and made `.map` throw).
  it('never lets undefined override inside the fingerprint option', () => {
    expect(resolveRouteOptions({ fingerprint: { query: undefined, headers: undefined } }).fingerprint).toEqual({
      query: true,
      headers: [],
    });
  });

  it('merges the fingerprint option field by field across module, controller and method', () => {
    const module = { fingerprint: { query: false } };
    const method = { fingerprint: { headers: ['X-A'] } };
    expect(resolveRouteOptions(module, undefined, method).fingerprint).toEqual({ query: false, headers: ['x-a'] });
  });

  it('removes set-cookie from replayHeaders, however it is spelled', () => {
    const options = resolveRouteOptions({ replayHeaders: ['Set-Cookie', 'location', 'SET-COOKIE', 'set-cookie'] });
    expect(options.replayHeaders).toEqual(['location']);
  });

  it('does not share arrays with the defaults or the sources', () => {
    const replayHeaders = ['etag'];
    const first = resolveRouteOptions({ replayHeaders });
    first.replayHeaders.push('x-leak');
    first.fingerprint.headers.push('x-leak');
    expect(replayHeaders).toEqual(['etag']);
    expect(resolveRouteOptions().replayHeaders).toEqual([...DEFAULT_REPLAY_HEADERS]);
    expect(resolveRouteOptions().fingerprint.headers).toEqual([]);
  });

  it('stores 4xx errors except the transient ones, and not 5xx, by default', () => {
    const { storeErrors } = resolveRouteOptions();
    const decide = (status: number) => storeErrors(status, new HttpException('x', status));
    expect([400, 402, 404, 410, 422, 499].map(decide)).toEqual([true, true, true, true, true, true]);
    expect([408, 409, 425, 429].map(decide)).toEqual([false, false, false, false]);
    expect([500, 502, 503, 302, 399].map(decide)).toEqual([false, false, false, false, false]);
    expect(storeErrors(400, new BadRequestException())).toBe(true);
  });

  it('resolves the default scope from request.user.id, .sub, .userId', () => {
    const { scope } = resolveRouteOptions();
    expect(scope({ user: { id: 42, sub: 'ignored' } }, context)).toBe('42');
    expect(scope({ user: { id: 0 } }, context)).toBe('0');
    expect(scope({ user: { id: null, sub: 'auth0|7' } }, context)).toBe('auth0|7');
    expect(scope({ user: { sub: 'auth0|7' } }, context)).toBe('auth0|7');
    expect(scope({ user: { userId: 'u-9', username: 'x' } }, context)).toBe('u-9');
  });

  // Anonymous callers in one shared scope could read each other's responses by guessing keys.
  it('refuses a request without an authenticated principal, naming the fix', () => {
    const { scope } = resolveRouteOptions();
    for (const request of [{}, undefined, { user: null }]) {
      expect(() => scope(request, context)).toThrow(/refuses anonymous callers[\s\S]*set the "scope" option/);
    }
  });

  it('refuses a user it cannot tell apart rather than sharing one scope between users', () => {
    const { scope } = resolveRouteOptions();
    for (const user of [{}, { username: 'alice' }, { id: '' }]) {
      expect(() => scope({ user }, context)).toThrow(/set the "scope" option/);
    }
  });

  it('uses a given scope resolver and error policy instead of the defaults', () => {
    const scope = () => 'tenant-1';
    const storeErrors = () => false;
    const options = resolveRouteOptions({ scope }, { storeErrors });
    expect(options.scope).toBe(scope);
    expect(options.storeErrors).toBe(storeErrors);
  });
});

describe('validateOptions', () => {
  const valid = (overrides: Partial<ResolvedRouteOptions> = {}) => ({ ...resolveRouteOptions(), ...overrides });

  it('accepts the defaults and both concurrency modes', () => {
    expect(() => validateOptions(valid(), 'module options')).not.toThrow();
    expect(() => validateOptions(valid({ concurrency: 'wait' }), 'module options')).not.toThrow();
  });

  it.each([
    ['waitTimeoutMs', 1, 2 ** 31 - 1],
    ['leaseMs', 30, 2 ** 31 - 1],
    ['ttlMs', 1, 100 * 365 * 24 * 60 * 60 * 1000],
    ['maxResponseBytes', 1, 64 * 2 ** 20],
    ['maxKeyLength', 1, 1024],
  ] as const)('accepts %s from %d to %d only, naming the option and where it was set', (name, min, max) => {
    for (const value of [0, -1, min - 1, max + 1, 1.5, 3e9 * 1e6, Number.NaN, Number.POSITIVE_INFINITY]) {
      expect(() => validateOptions(valid({ [name]: value }), '@Idempotent() on PaymentsController.create')).toThrow(
        `IdempotencyModule: @Idempotent() on PaymentsController.create: "${name}" must be a whole number from ${min} to ${max}, got ${value}.`,
      );
    }
    for (const value of [min, max])
      expect(() => validateOptions(valid({ [name]: value }), 'module options')).not.toThrow();
  });

  // setTimeout fires at once past 2^31-1 ms: a 3e9 ms wait would give up immediately on every request,
  // and a 1e10 ms lease would renew every millisecond.
  it('refuses the durations that timers cannot hold', () => {
    expect(() => validateOptions(valid({ waitTimeoutMs: 3e9 }), 'module options')).toThrow(/"waitTimeoutMs"/);
    expect(() => validateOptions(valid({ leaseMs: 1e10 }), 'module options')).toThrow(/"leaseMs"/);
  });

  it('rejects a Retry-After that is not a whole number of seconds', () => {
    for (const retryAfterSeconds of [-1, 1.5, Number.NaN]) {
      expect(() => validateOptions(valid({ retryAfterSeconds }), 'module options')).toThrow(/"retryAfterSeconds"/);
    }
    expect(() => validateOptions(valid({ retryAfterSeconds: 0 }), 'module options')).not.toThrow();
  });

  it.each(['scope', 'storeErrors'] as const)('rejects a %s that is not a function', (name) => {
    expect(() => validateOptions(valid({ [name]: 'user' as never }), 'module options')).toThrow(
      `"${name}" must be a function`,
    );
  });

  it('rejects an unknown concurrency mode', () => {
    expect(() => validateOptions(valid({ concurrency: 'queue' as never }), 'module options')).toThrow(
      /"concurrency" must be 'reject' or 'wait'/,
    );
  });

  it.each(['', 'Idempotency Key', 'Idempotency-Key:', 'clé', 'a\nb'])('rejects the header name %j', (headerName) => {
    expect(() => validateOptions(valid({ headerName }), 'module options')).toThrow(
      'IdempotencyModule: module options: "headerName" is not a valid header name.',
    );
  });

  it('accepts header names made of token characters', () => {
    expect(() =>
      validateOptions(valid({ headerName: "X-Request_Key.v2!#$%&'*+^`|~" }), 'module options'),
    ).not.toThrow();
  });
});

describe('validateModuleOptions', () => {
  it('accepts false or a timer-sized purgeIntervalMs only', () => {
    for (const purgeIntervalMs of [false, undefined, 1000, 2 ** 31 - 1] as const) {
      expect(() => validateModuleOptions({ purgeIntervalMs })).not.toThrow();
    }
    for (const purgeIntervalMs of [0, 10, 2 ** 31, 1e12, 1.5e3 + 0.5, Number.NaN]) {
      expect(() => validateModuleOptions({ purgeIntervalMs })).toThrow(
        /"purgeIntervalMs" must be false or a whole number/,
      );
    }
  });

  it('wants fingerprint secrets of at least 16 bytes, one or a list', () => {
    expect(() => validateModuleOptions({ fingerprintSecret: 'x'.repeat(16) })).not.toThrow();
    expect(() => validateModuleOptions({ fingerprintSecret: [Buffer.alloc(32), 'y'.repeat(20)] })).not.toThrow();
    for (const fingerprintSecret of ['short', Buffer.alloc(8), ['x'.repeat(16), ''], 42 as never]) {
      expect(() => validateModuleOptions({ fingerprintSecret })).toThrow(/"fingerprintSecret"/);
    }
  });
});

describe('option shapes', () => {
  it('refuses lists and flags of the wrong type with a message naming them', () => {
    expect(() => resolveRouteOptions({ replayHeaders: 'etag' as never })).toThrow(/"replayHeaders" must be an array/);
    expect(() => resolveRouteOptions({ fingerprint: { headers: 'x-tenant' as never } })).toThrow(
      /"fingerprint.headers" must be an array/,
    );
    expect(() => resolveRouteOptions({ fingerprint: null as never })).toThrow(/"fingerprint" must be an object/);
    const valid = resolveRouteOptions();
    expect(() => validateOptions({ ...valid, required: 'false' as never }, 'module options')).toThrow(
      /"required" must be true or false/,
    );
    expect(() => validateOptions({ ...valid, transactional: 1 as never }, 'module options')).toThrow(/"transactional"/);
  });

  it('refuses module options that are not an object, and an empty secret list', () => {
    expect(() => validateModuleOptions(null as never)).toThrow(/module options are null; return an object/);
    expect(() => validateModuleOptions({ fingerprintSecret: [] })).toThrow(/"fingerprintSecret" is an empty list/);
  });

  // String({ tenant, name }) is "[object Object]" for every user: one shared scope.
  it('refuses a principal whose id is an object, instead of stringifying it', () => {
    const { scope } = resolveRouteOptions();
    expect(() => scope({ user: { id: { tenant: 't1', name: 'alice' } } }, context)).toThrow(/no usable id/);
    expect(() => scope({ user: { id: Number.NaN } }, context)).toThrow(/no usable id/);
    expect(scope({ user: { id: 7n } }, context)).toBe('7');
  });
});
