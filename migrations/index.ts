import { CreateIdempotencyKeys1764288000000 } from './1764288000000-create-idempotency-keys.js';
import { CreateIdempotencySettings1780000000000 } from './1780000000000-create-idempotency-settings.js';

export { CreateIdempotencyKeys1764288000000, CreateIdempotencySettings1780000000000 };

/** The library's migrations, in order: add them to your DataSource's `migrations`. */
export const idempotencyMigrations = [CreateIdempotencyKeys1764288000000, CreateIdempotencySettings1780000000000];
