import { describe } from '@jest/globals';
import { existsSync } from 'node:fs';
import { describeNotRun } from './brokers.js';

/** Debian's Chromium (`apt-get install -y chromium`, which .ci/run does): never a browser downloaded by a test tool. */
export const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';

/**
 * As the probe of this machine runs it: headless, as root without the sandbox, and with
 * nothing that reaches for the network on its own (the closed network refuses it, many
 * connections at a time).
 */
export const CHROMIUM_ARGS = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
  '--no-first-run',
];

/**
 * `describe` for a suite that drives Chromium. Without it the suite does not run and is
 * never counted as passed: with `REQUIRE_BROWSER=1` (CI) it fails; otherwise it is
 * skipped, and the run ends with a notice naming it.
 */
export function describeWithBrowser(): typeof describe {
  if (existsSync(CHROMIUM)) return describe;
  return describeNotRun(
    'needs Chromium',
    `Chromium is not installed at ${CHROMIUM} (apt-get install -y chromium; .ci/run installs it)`,
    process.env.REQUIRE_BROWSER === '1',
  );
}
