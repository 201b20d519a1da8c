// TypeORM 0.3.0's package.json "exports" sends an ES module import to index.mjs, which has
// no declaration file beside it, so TypeScript (moduleResolution nodenext) finds no types
// for `import ... from 'typeorm'` (TS7016); later 0.3.x releases fixed their exports. The
// declarations are there, under the subpath the exports map does give them for.
declare module 'typeorm' {
  export * from 'typeorm/index.js';
}
