import { type ConsumerSettings, startConsumer } from './message-app.js';

/**
 * A consumer process for broker tests: `CONSUMER_SETTINGS` holds its settings as JSON.
 * Each observation is one line on stdout, `@@` and JSON; the first is `ready`.
 */
async function main(): Promise<void> {
  const settings = JSON.parse(process.env.CONSUMER_SETTINGS ?? '') as ConsumerSettings;
  const app = await startConsumer(settings, (observation) => {
    process.stdout.write(`@@${JSON.stringify(observation)}\n`);
  });
  process.once('SIGTERM', () => {
    void app.close().then(() => process.exit(0));
  });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
