// The package as a user gets it: npm pack (whose prepack builds dist/),
// the tarball installed into an empty project, and the README's examples,
// ES module and CommonJS, run with plain node against a local server that
// answers GET /sse as the edge does. It packs a copy of the package, so the
// dist/ the other tests import is left alone.
import { test } from "node:test";
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

const root = fileURLToPath(new URL("..", import.meta.url));
const npm = process.platform === "win32" ? "npm.cmd" : "npm";
const run = (cwd, ...args) => execFileSync(npm, args, { cwd, encoding: "utf8", stdio: ["ignore", "pipe", "inherit"] });

// readmeExample returns the README's js block whose first line names file.
function readmeExample(file) {
  const readme = readFileSync(join(root, "README.md"), "utf8");
  for (const [, code] of readme.matchAll(/```js\n([\s\S]*?)```/g)) {
    if (code.startsWith(`// ${file}:`)) return code;
  }
  throw new Error(`README.md has no js block starting "// ${file}:"`);
}

// edge answers GET /sse for order:* as the edge does: a subscribed event,
// then one event.
function edge(t) {
  const seen = [];
  const server = createServer((req, res) => {
    const u = new URL(req.url, "http://x");
    if (u.pathname !== "/sse") return res.writeHead(404).end();
    seen.push({ channels: u.searchParams.getAll("channel"), authorization: req.headers.authorization });
    res.writeHead(200, { "Content-Type": "text/event-stream" });
    res.write('event: subscribed\ndata: {"channel":"order:*","positions":{"order":{"offset":"6-0","epoch":"e1"}}}\n\n');
    const frame = { channel: "order:placed", subscriptions: ["order:*"], offset: "7-0", epoch: "e1", event: { type: "order.placed", subject: "o1" } };
    res.write("id: x\ndata: " + JSON.stringify(frame) + "\n\n");
  });
  server.on("upgrade", (req, socket) => socket.destroy()); // WebSocket refused: the client goes on over SSE
  t.after(() => {
    server.close();
    server.closeAllConnections();
  });
  return new Promise((resolve) => server.listen(0, "127.0.0.1", () => resolve({ url: `http://127.0.0.1:${server.address().port}`, seen })));
}

// runUntil runs node file in cwd until it prints want, and returns what it printed.
async function runUntil(t, cwd, file, env, want) {
  const child = spawn(process.execPath, [file], { cwd, env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "inherit"] });
  t.after(() => child.kill());
  const lines = [];
  for await (const line of createInterface({ input: child.stdout })) {
    lines.push(line);
    if (line === want) break;
  }
  child.kill();
  return lines;
}

test("npm pack ships the build, and the README's examples run from the installed tarball", { timeout: 300_000 }, async (t) => {
  const tmp = mkdtempSync(join(tmpdir(), "eventbus-pack-"));
  t.after(() => rmSync(tmp, { recursive: true, force: true }));

  const pkg = join(tmp, "package");
  for (const f of ["package.json", "package-lock.json", "tsconfig.json", "tsconfig.cjs.json", "README.md", "scripts", "src"]) {
    cpSync(join(root, f), join(pkg, f), { recursive: true });
  }
  symlinkSync(join(root, "node_modules"), join(pkg, "node_modules"), "dir");
  const tarball = join(tmp, run(pkg, "pack", "--silent", "--pack-destination", tmp).trim().split("\n").pop());

  const app = join(tmp, "app");
  cpSync(join(root, "test", "testdata", "empty-project"), app, { recursive: true });
  run(app, "install", "--offline", "--no-audit", "--no-fund", "--loglevel=error", tarball);
  const installed = join(app, "node_modules", "@eventbus-suite", "client");
  for (const f of ["dist/eventbus.js", "dist/eventbus.d.ts", "dist/cjs/eventbus.js", "dist/cjs/eventbus.d.ts", "dist/cjs/package.json", "README.md"]) {
    assert.ok(existsSync(join(installed, f)), `the tarball has ${f}`);
  }
  const lock = JSON.parse(readFileSync(join(app, "package-lock.json"), "utf8"));
  assert.deepEqual(Object.keys(lock.packages), ["", "node_modules/@eventbus-suite/client"], "no runtime dependencies");

  // The types resolve for import and for require, as TypeScript's node16 resolution reads exports.
  const tsc = join(root, "node_modules", "typescript", "bin", "tsc");
  execFileSync(process.execPath, [tsc, "-p", "."], { cwd: app, stdio: "inherit" });

  const server = await edge(t);
  const env = { EVENTBUS_URL: server.url, EVENTBUS_TOKEN: "t0k3n" };
  for (const file of ["example.mjs", "example.cjs"]) {
    await t.test(file, async (t) => {
      writeFileSync(join(app, file), readmeExample(file));
      const lines = await runUntil(t, app, file, env, "order:placed 7-0 order.placed");
      assert.equal(lines.at(-1), "order:placed 7-0 order.placed", lines.join("\n"));
      assert.ok(lines.includes("on sse"), lines.join("\n"));
    });
  }
  assert.deepEqual(server.seen.at(-1), { channels: ["order:*"], authorization: "Bearer t0k3n" });
});
