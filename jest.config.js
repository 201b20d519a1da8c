// Tests are compiled by `tsc` with the rest of the project (one build, real decorator
// metadata) and Jest runs the compiled ES modules as they are, with no transform.
export default {
  rootDir: 'dist',
  roots: ['<rootDir>/test'],
  testMatch: ['**/*.spec.js'],
  testEnvironment: 'node',
  transform: {},
  globalSetup: '<rootDir>/test/support/global-setup.js',
  globalTeardown: '<rootDir>/test/support/global-teardown.js',
  testTimeout: 60_000,
  maxWorkers: 2,
};
