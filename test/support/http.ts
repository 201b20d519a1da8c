import { type IncomingHttpHeaders, request } from 'node:http';

export interface HttpResult {
  status: number;
  headers: Headers;
  /** The body exactly as received. */
  text: string;
  json: any;
}

export interface RequestOptions {
  key?: string;
  user?: string;
  body?: unknown;
  headers?: Record<string, string>;
}

/** One real HTTP request; `key` and `user` fill Idempotency-Key and X-User-Id. */
export async function send(
  base: string,
  method: string,
  path: string,
  options: RequestOptions = {},
): Promise<HttpResult> {
  const headers: Record<string, string> = { ...options.headers };
  if (options.key !== undefined) headers['idempotency-key'] = options.key;
  if (options.user !== undefined) headers['x-user-id'] = options.user;
  let body: string | undefined;
  if (options.body !== undefined) {
    headers['content-type'] ??= 'application/json';
    body = typeof options.body === 'string' ? options.body : JSON.stringify(options.body);
  }
  const response = await fetch(base + path, { method, headers, body });
  const text = await response.text();
  let json: unknown;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: response.status, headers: response.headers, text, json };
}

export const post = (base: string, path: string, options: RequestOptions = {}) => send(base, 'POST', path, options);

export interface RawRequestOptions {
  method?: string;
  /**
   * Request headers, sent as given: an object, or a flat list of raw name/value pairs
   * (`['Idempotency-Key', 'a', 'Idempotency-Key', 'b']`) to send one header in several lines.
   * Unlike fetch, this may set `Host`.
   */
  headers?: Record<string, string> | string[];
  body?: string | Buffer;
}

export interface RawHttpResult {
  status: number;
  headers: IncomingHttpHeaders;
  text: string;
  json: any;
}

/** One HTTP/1.1 request through node:http, for what fetch cannot send (a Host header, repeated header lines). */
export function rawRequest(base: string, path: string, options: RawRequestOptions = {}): Promise<RawHttpResult> {
  const url = new URL(path, base);
  let headers = options.headers ?? {};
  if (Array.isArray(headers)) {
    // Node sends a raw list as it is, without the Host and Content-Length it adds to an object.
    const lines = [...headers];
    const named = (name: string) => lines.some((value, i) => i % 2 === 0 && value.toLowerCase() === name);
    if (!named('host')) lines.push('Host', url.host);
    if (options.body !== undefined && !named('content-length'))
      lines.push('Content-Length', String(Buffer.byteLength(options.body)));
    headers = lines;
  }
  return new Promise((resolve, reject) => {
    const outgoing = request(
      {
        host: url.hostname,
        port: url.port,
        path: url.pathname + url.search,
        method: options.method ?? 'POST',
        headers,
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('error', reject);
        response.on('end', () => {
          const text = Buffer.concat(chunks).toString('utf8');
          let json: unknown;
          try {
            json = text ? JSON.parse(text) : undefined;
          } catch {
            json = undefined;
          }
          resolve({ status: response.statusCode ?? 0, headers: response.headers, text, json });
        });
      },
    );
    outgoing.on('error', reject);
    outgoing.end(options.body);
  });
}
