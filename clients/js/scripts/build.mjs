// Builds dist/ with the pinned compiler: the ES module (dist/eventbus.js,
// which the edge also serves as /eventbus.js) and the CommonJS build
// (dist/cjs), each with its type declarations. npm run build; npm pack and
// npm publish run it first (prepack).
import { execFileSync } from "node:child_process";
import { rmSync, writeFileSync } from "node:fs";
import { createRequire } from "node:module";

const tsc = createRequire(import.meta.url).resolve("typescript/bin/tsc");
rmSync("dist", { recursive: true, force: true });
for (const project of ["tsconfig.json", "tsconfig.cjs.json"]) {
  execFileSync(process.execPath, [tsc, "-p", project], { stdio: "inherit" });
}
// The package is "type": "module": this makes dist/cjs/*.js CommonJS, to
// Node and to TypeScript alike.
writeFileSync("dist/cjs/package.json", '{ "type": "commonjs" }\n');
