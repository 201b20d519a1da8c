import { HttpStatus, Logger, type Type } from '@nestjs/common';
import type { DiscoveryService, MetadataScanner } from '@nestjs/core';
import { describeError, PROBLEM_TYPE_BASE } from '../errors.js';
import type { HttpRoute } from '../http/http-route.js';
import { REPLAYED_HEADER } from '../http/idempotency.interceptor.js';
import type { IdempotentRoutes } from '../idempotent-routes.js';
import { type Handler, isHttpHandler, successStatusOf } from '../route-metadata.js';

/**
 * Where @nestjs/swagger keeps an operation's responses (its `DECORATORS.API_RESPONSE`, unchanged
 * since its first majors): the success entry is merged into the route's own there.
 */
const API_RESPONSE = 'swagger/apiResponse';

/** The parts of @nestjs/swagger this uses, loaded only if it is installed. */
interface Swagger {
  ApiHeader(options: Record<string, unknown>): MethodDecorator;
  ApiResponse(options: Record<string, unknown>): MethodDecorator;
}

/** The provider that documents the routes while the application is created (its value is nothing). */
export const OPENAPI_DOCUMENTED = Symbol('idempotency:openapi');

/** Handlers documented already: an application created twice in one process (tests) must not list the header twice. */
const documented = new WeakSet<object>();

/** An RFC 9457 problem document as the library sends it. */
function problemSchema(slugs: readonly string[], status: number): Record<string, unknown> {
  return {
    type: 'object',
    required: ['type', 'title', 'status'],
    properties: {
      type: { type: 'string', enum: slugs.map((slug) => PROBLEM_TYPE_BASE + slug) },
      title: { type: 'string' },
      status: { type: 'integer', enum: [status] },
      detail: { type: 'string' },
    },
  };
}

const RETRY_AFTER = (route: HttpRoute) => ({
  'Retry-After': {
    description: 'Seconds to wait before retrying with the same key.',
    schema: { type: 'integer', example: route.options.retryAfterSeconds },
  },
});

/** The problem responses an idempotent route can give, per status (the README's _Status codes_). */
function problemResponses(route: HttpRoute): Array<Record<string, unknown>> {
  const { headerName } = route.options;
  const problem = (status: number, description: string, slugs: string[], headers?: object) => ({
    status,
    description,
    headers,
    content: { 'application/problem+json': { schema: problemSchema(slugs, status) } },
  });
  return [
    problem(
      HttpStatus.BAD_REQUEST,
      route.options.required
        ? `The ${headerName} header is missing or malformed.`
        : `The ${headerName} header is malformed.`,
      route.options.required ? ['missing-key', 'invalid-key'] : ['invalid-key'],
    ),
    problem(
      HttpStatus.CONFLICT,
      route.options.concurrency === 'wait'
        ? `A request with this key is still in progress after waiting ${route.options.waitTimeoutMs} ms.`
        : 'A request with this key is still in progress.',
      ['request-in-progress'],
      RETRY_AFTER(route),
    ),
    problem(HttpStatus.UNPROCESSABLE_ENTITY, 'This key was used with a different request payload.', ['key-reused']),
    problem(
      HttpStatus.SERVICE_UNAVAILABLE,
      'The idempotency store could not be reached; the request was not processed.',
      ['store-unavailable'],
      RETRY_AFTER(route),
    ),
  ];
}

/**
 * Documents every `@Idempotent()` HTTP route in the OpenAPI document that @nestjs/swagger
 * builds: the key header (required or not, per the route), the `Idempotent-Replayed`
 * header of the success response, and the problem responses (400, 409 and 503 with
 * `Retry-After`, 422) as `application/problem+json`. It runs while the application is
 * created, before `SwaggerModule.createDocument()` reads the decorators' metadata. Without
 * @nestjs/swagger installed, it does nothing: the import fails and nothing else is loaded.
 */
export async function documentIdempotentRoutes(
  routes: IdempotentRoutes,
  discovery: DiscoveryService,
  scanner: MetadataScanner,
  load: () => Promise<unknown> = () => import('@nestjs/swagger'),
): Promise<void> {
  let swagger: Swagger;
  try {
    swagger = (await load()) as Swagger;
  } catch {
    return; // not installed: nothing to document
  }
  try {
    for (const wrapper of discovery.getControllers()) {
      const controller = wrapper.metatype as Type | undefined;
      if (!controller?.prototype) continue;
      for (const name of scanner.getAllMethodNames(controller.prototype as object)) {
        documentHandler(swagger, routes, controller, name);
      }
    }
  } catch (error) {
    // Documentation must never keep the application from starting.
    new Logger('Idempotency').warn(`could not document idempotent routes for OpenAPI: ${describeError(error)}`);
  }
}

function documentHandler(swagger: Swagger, routes: IdempotentRoutes, controller: Type, name: string): void {
  const handler = (controller.prototype as Record<string, unknown>)[name] as Handler;
  if (typeof handler !== 'function' || documented.has(handler) || !isHttpHandler(handler)) return;
  const route = routes.of(controller, handler);
  if (route?.context !== 'http') return;
  documented.add(handler);
  // Decorators write to the method through its descriptor, found where the method is defined.
  let owner = controller.prototype as object;
  while (!Object.prototype.hasOwnProperty.call(owner, name)) owner = Object.getPrototypeOf(owner) as object;
  const descriptor = Object.getOwnPropertyDescriptor(owner, name)!;
  const decorate = (decorator: MethodDecorator) => decorator(owner, name, descriptor);

  const { headerName, maxKeyLength, required } = route.options;
  const keyRequired = required && route.deriveWindowMs === undefined;
  decorate(
    swagger.ApiHeader({
      name: headerName,
      required: keyRequired,
      description:
        'A unique key for this operation, chosen by the client (a UUID, say), sent bare or as a quoted ' +
        'structured-field string. Retries with the same key and payload get the stored response ' +
        `(with ${REPLAYED_HEADER}: true) instead of running the operation again.` +
        (keyRequired ? '' : ' Optional here: without it, the request runs as if the route were not idempotent.'),
      schema: {
        type: 'string',
        minLength: 1,
        maxLength: maxKeyLength,
        example: '8e03978e-40d5-43e8-bc93-6894a57f9324',
      },
    }),
  );
  const declared = (Reflect.getMetadata(API_RESPONSE, handler) ?? {}) as Record<string, Record<string, unknown>>;
  const status = successStatusOf(handler);
  const success = declared[status] ?? { description: '' };
  // Written as the stored entry itself, not through ApiResponse(), which merges an existing
  // entry differently across @nestjs/swagger majors (12 concatenates descriptions).
  Reflect.defineMetadata(
    API_RESPONSE,
    {
      ...declared,
      [status]: {
        ...success,
        headers: {
          ...(success.headers as object | undefined),
          [REPLAYED_HEADER]: {
            description:
              'Present, with the value true, when this is the stored response of an earlier request with the same key.',
            schema: { type: 'string', enum: ['true'] },
          },
        },
      },
    },
    handler,
  );
  // Statuses the application documents itself are left as they are.
  for (const response of problemResponses(route)) {
    if (declared[response.status as number] === undefined) decorate(swagger.ApiResponse(response));
  }
}
