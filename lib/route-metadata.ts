/**
 * What Nest's route decorators record, read without importing Nest's internals.
 *
 * `@nestjs/common` exposes these metadata keys only through paths it marks internal
 * (`@nestjs/common/internal` in 12, `@nestjs/common/constants` in 11), which differ
 * between majors and between its CommonJS and ESM builds. The key strings themselves
 * have not changed since Nest 5, so they are written out here, in one place.
 */

import type { Type } from '@nestjs/common';

/** A method of a controller or provider, as Nest's method decorators see it. */
export type Handler = (...args: any[]) => unknown;

const PATH = 'path';
const METHOD = 'method';
const HOST = 'host';
const VERSION = '__version__';
const ROUTE_ARGS = '__routeArguments__';
const RESPONSE_PASSTHROUGH = '__responsePassthrough__';
const SSE = '__sse__';
const HEADERS = '__headers__';
const HTTP_CODE = '__httpCode__';
const INTERCEPTORS = '__interceptors__';
/** `@MessagePattern()` / `@EventPattern()` of `@nestjs/microservices`. */
const MESSAGE_PATTERN = 'microservices:pattern';
/** `PatternHandler.MESSAGE` (1) or `.EVENT` (2). */
const MESSAGE_HANDLER_TYPE = 'microservices:handler_type';
const EVENT_HANDLER = 2;
/** `@SubscribeMessage()` of `@nestjs/websockets`. */
const WEBSOCKET_MESSAGE = 'message';

/**
 * `RequestMethod` values of the methods that must not change state (RFC 9110 §9.2.1;
 * SEARCH and PROPFIND from WebDAV). `ALL` (5) is not among them: it serves every method.
 */
const SAFE_REQUEST_METHODS = new Map([
  [0, 'GET'],
  [6, 'OPTIONS'],
  [7, 'HEAD'],
  [8, 'SEARCH'],
  [9, 'PROPFIND'],
]);

/** The same methods by name, as requests carry them. */
export const SAFE_METHODS: ReadonlySet<string> = new Set([...SAFE_REQUEST_METHODS.values(), 'TRACE']);
/** `RouteParamtypes.RESPONSE` and `.NEXT`: parameters through which a handler answers by itself. */
const RESPONSE_PARAM_TYPES = new Set([1, 2]);

/** Whether a method is an HTTP route handler (`@Get()`, `@Post()`, ...). */
export function isHttpHandler(handler: Handler): boolean {
  return Reflect.getMetadata(PATH, handler) !== undefined;
}

/** Whether a method handles messages or events of `@nestjs/microservices`. */
export function isMessageHandler(handler: Handler): boolean {
  return Reflect.getMetadata(MESSAGE_PATTERN, handler) !== undefined;
}

/** Whether a method handles websocket messages (`@SubscribeMessage()`). */
export function isWebsocketHandler(handler: Handler): boolean {
  return Reflect.getMetadata(WEBSOCKET_MESSAGE, handler) !== undefined;
}

/** Whether a message handler handles events (`@EventPattern`: no reply) rather than requests (`@MessagePattern`). */
export function isEventHandler(handler: Handler): boolean {
  return Reflect.getMetadata(MESSAGE_HANDLER_TYPE, handler) === EVENT_HANDLER;
}

/**
 * The patterns a message handler serves, as stable text: strings as they are, object
 * patterns as JSON with sorted keys (as Nest itself normalises them).
 */
export function messagePatternsOf(handler: Handler): string {
  const patterns = (Reflect.getMetadata(MESSAGE_PATTERN, handler) ?? []) as unknown[];
  return patterns.map((pattern) => (typeof pattern === 'string' ? pattern : sortedJson(pattern))).join(' | ');
}

function sortedJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? String(value);
  if (Array.isArray(value)) return `[${value.map(sortedJson).join(',')}]`;
  const entries = Object.keys(value)
    .sort()
    .map((name) => `${JSON.stringify(name)}:${sortedJson((value as Record<string, unknown>)[name])}`);
  return `{${entries.join(',')}}`;
}

/** The HTTP method name of a route handler when it is a safe one (GET, HEAD, OPTIONS). */
export function safeMethodOf(handler: Handler): string | undefined {
  return SAFE_REQUEST_METHODS.get(Reflect.getMetadata(METHOD, handler) as number);
}

export function pathsOf(target: object): unknown {
  return Reflect.getMetadata(PATH, target);
}

/**
 * The version a handler serves (`@Version()` on it, else on or in `@Controller()`), as
 * text; undefined when it declares none. `VERSION_NEUTRAL` is a symbol.
 */
export function versionOf(controller: Type, handler: Handler): string | undefined {
  const version: unknown = Reflect.getMetadata(VERSION, handler) ?? Reflect.getMetadata(VERSION, controller);
  if (version === undefined) return undefined;
  const text = (value: unknown) => (typeof value === 'symbol' ? 'neutral' : String(value));
  return Array.isArray(version) ? version.map(text).join(',') : text(version);
}

/** The host pattern(s) of `@Controller({ host })`, as text; undefined without one. */
export function hostOf(controller: Type): string | undefined {
  const host = Reflect.getMetadata(HOST, controller) as string | RegExp | Array<string | RegExp> | undefined;
  if (host === undefined) return undefined;
  return Array.isArray(host) ? host.map(String).join(',') : String(host);
}

/** Names of the response headers a handler declares with `@Header()`. */
export function declaredHeaders(handler: Handler): string[] {
  const headers = (Reflect.getMetadata(HEADERS, handler) ?? []) as Array<{ name?: unknown }>;
  return headers.map(({ name }) => String(name));
}

export function isServerSentEvents(handler: Handler): boolean {
  return Boolean(Reflect.getMetadata(SSE, handler));
}

/** Whether the handler writes the response itself (`@Res()` or `@Next()` without passthrough). */
export function writesResponseItself(controller: Type, handler: Handler): boolean {
  const args = (Reflect.getMetadata(ROUTE_ARGS, controller, nameOf(handler)) ?? {}) as Record<string, unknown>;
  const takesResponse = Object.keys(args).some((key) => RESPONSE_PARAM_TYPES.has(Number(key.split(':')[0])));
  return takesResponse && !Reflect.getMetadata(RESPONSE_PASSTHROUGH, controller, nameOf(handler));
}

/** A function's name (a method's is its property name, under which Nest keys parameter metadata). */
export function nameOf(target: Handler): string {
  return (target as { name?: string }).name ?? '';
}

/** The status of a handler's success: `@HttpCode()`, else 201 for POST and 200 for the rest, as Nest answers. */
export function successStatusOf(handler: Handler): number {
  const code = Reflect.getMetadata(HTTP_CODE, handler) as number | undefined;
  if (code) return code;
  return Reflect.getMetadata(METHOD, handler) === 1 ? 201 : 200; // RequestMethod.POST is 1
}

/** Whether `@UseInterceptors()` on the controller or the handler names `interceptor` (its class or an instance). */
export function namesInterceptor(controller: Type, handler: Handler, interceptor: Type): boolean {
  const named = [controller, handler].flatMap(
    (target) => (Reflect.getMetadata(INTERCEPTORS, target) ?? []) as unknown[],
  );
  return named.some((entry) => entry === interceptor || entry instanceof interceptor);
}
