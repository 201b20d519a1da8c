import { idempotencyMigrations } from '../../lib/index.js';
import { CreateSampleTables1764288000001 } from './1764288000001-create-sample-tables.js';

/**
 * The sample app's migrations, in order: the library's, added like any other of an
 * application's, then its own tables. The tests and the bench migrate with the same list.
 */
export const sampleMigrations = [...idempotencyMigrations, CreateSampleTables1764288000001];
