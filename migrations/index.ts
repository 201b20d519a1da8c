import { CreateIdempotencyKeys1764288000000 } from './1764288000000-create-idempotency-keys.js';
import { CreateIdempotencySettings1780000000000 } from './1780000000000-create-idempotency-settings.js';
import { AllowOperatorDeletes1796040000000 } from './1796040000000-allow-operator-deletes.js';

export {
  CreateIdempotencyKeys1764288000000,
  CreateIdempotencySettings1780000000000,
  AllowOperatorDeletes1796040000000,
};

/** The library's migrations, in order: add them to your DataSource's `migrations`. */
export const idempotencyMigrations = [
  CreateIdempotencyKeys1764288000000,
  CreateIdempotencySettings1780000000000,
  AllowOperatorDeletes1796040000000,
];
