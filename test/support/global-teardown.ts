import { existsSync, readFileSync } from 'node:fs';

export default async function globalTeardown(): Promise<void> {
  await (globalThis as { stopTestDatabase?: () => Promise<void> }).stopTestDatabase?.();
  const file = process.env.SKIPPED_SUITES_FILE;
  const skipped = file && existsSync(file) ? readFileSync(file, 'utf8').trim() : '';
  if (skipped) {
    // Loud on purpose: these suites did not pass, they did not run.
    const rule = '!'.repeat(78);
    console.warn(
      `\n${rule}\nSUITES NOT RUN (a broker or browser they need is missing; not counted as passed):\n${skipped}\n${rule}\n`,
    );
  }
}
