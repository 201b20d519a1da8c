// @ts-check
// As `nest new` sets ESLint up (typescript-eslint's type-checked rules, Prettier as a rule),
// over the library, its tests, the sample app and the bench.
import eslint from '@eslint/js';
import eslintPluginPrettierRecommended from 'eslint-plugin-prettier/recommended';
import globals from 'globals';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  {
    ignores: [
      'eslint.config.mjs',
      'jest.config.js',
      'dist/**',
      '.data/**',
      '.cache/**',
      '.build-*/**',
      'coverage/**',
      // The consumer apps are other projects, with their own dependencies and tooling.
      'test/compat/*/**',
    ],
  },
  eslint.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  eslintPluginPrettierRecommended,
  {
    languageOptions: {
      globals: { ...globals.node, ...globals.jest },
      sourceType: 'module',
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
  },
  {
    rules: {
      '@typescript-eslint/no-explicit-any': 'off',
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unsafe-argument': 'warn',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
    },
  },
  {
    // Tests and the bench read response bodies and database rows, which are `any` by nature.
    files: ['test/**/*.ts', 'bench/**/*.ts'],
    rules: {
      '@typescript-eslint/no-unsafe-member-access': 'off',
      '@typescript-eslint/no-unsafe-assignment': 'off',
      '@typescript-eslint/no-unsafe-return': 'off',
      '@typescript-eslint/no-unsafe-call': 'off',
      '@typescript-eslint/no-unsafe-argument': 'off',
    },
  },
  {
    // In-process implementations of an async contract: their methods have nothing to await.
    files: ['lib/storage/memory.store.ts', 'test/store/memory.store.spec.ts'],
    rules: { '@typescript-eslint/require-await': 'off' },
  },
);
