import { CreateIdempotencyKeys1764288000000 } from './1764288000000-create-idempotency-keys.js';

export { CreateIdempotencyKeys1764288000000 };

/** The library's migrations, in order: add them to your DataSource's `migrations`. */
export const idempotencyMigrations = [CreateIdempotencyKeys1764288000000];
