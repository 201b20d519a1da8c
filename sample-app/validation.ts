import { BadRequestException } from '@nestjs/common';

/** A 400 problem listing every invalid field, so a client can fix all of them at once. */
export class InvalidBodyException extends BadRequestException {
  constructor(errors: string[]) {
    super({
      type: 'urn:sample-app:problem:invalid-body',
      title: 'Invalid request body',
      status: 400,
      detail: errors.join('; '),
      errors,
    });
  }
}

export function objectBody(body: unknown): Record<string, unknown> {
  if (body === null || typeof body !== 'object' || Array.isArray(body)) {
    throw new InvalidBodyException(['the body must be a JSON object']);
  }
  return body as Record<string, unknown>;
}
