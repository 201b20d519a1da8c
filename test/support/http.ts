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
export async function send(base: string, method: string, path: string, options: RequestOptions = {}): Promise<HttpResult> {
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
