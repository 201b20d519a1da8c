import { idempotencyMigrations } from '../../lib/index.js';
import { CreateSampleTables1764288000001 } from './1764288000001-create-sample-tables.js';
import { CreateReceiptsAndOutbox1796083200000 } from './1796083200000-create-receipts-and-outbox.js';
import { CreateSettlements1796083200001 } from './1796083200001-create-settlements.js';

/**
 * The sample app's migrations, in order: the library's, added like any other of an
 * application's, then its own tables. The tests and the bench migrate with the same list.
 * The tables of the optional broker features are created whether those run or not.
 */
export const sampleMigrations = [
  ...idempotencyMigrations,
  CreateSampleTables1764288000001,
  CreateReceiptsAndOutbox1796083200000,
  CreateSettlements1796083200001,
];
