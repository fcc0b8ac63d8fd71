// Writes the browser module the demo page imports: the compiled client (dist/index.js, which has
// no run-time imports) with a header, to services/ws-server/src/page/chat-client.js. The file is
// committed so that building the server needs no npm; `--check` fails when the committed file
// differs from what the current sources build (run `npm run build` and commit the result).
//
//   node scripts/bundle.mjs           write the module (after `tsc`, see `npm run build`)
//   node scripts/bundle.mjs --check   compare only; exit 1 when stale
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const root = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const source = path.join(root, "dist", "index.js");
const target = path.resolve(root, "..", "..", "services", "ws-server", "src", "page", "chat-client.js");
const rel = (file) => path.relative(process.cwd(), file) || file;

if (!fs.existsSync(source)) {
  console.error(`bundle: ${rel(source)} is missing: run tsc first (npm run build)`);
  process.exit(1);
}
const compiled = fs.readFileSync(source, "utf8");
if (/^\s*(import|export)\s[^;]*\sfrom\s/m.test(compiled) || /\bimport\s*\(/.test(compiled)) {
  console.error(`bundle: ${rel(source)} imports another module; the page's module must be self-contained`);
  process.exit(1);
}
const header =
  "// GENERATED from clients/js/src/index.ts by `npm run build` in clients/js: do not edit.\n" +
  "// The demo page's copy of @chat-stream/client (served at /chat-client.js); scripts/client-test\n" +
  "// fails when it differs from a fresh build.\n";
const bundle = header + compiled;

if (process.argv.includes("--check")) {
  const committed = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : null;
  if (committed !== bundle) {
    console.error(
      committed === null
        ? `bundle: ${rel(target)} is missing`
        : `bundle: ${rel(target)} is stale: it differs from a fresh build of clients/js/src`,
    );
    console.error("bundle: run `npm run build` in clients/js and commit the result");
    process.exit(1);
  }
  console.log(`bundle: ${rel(target)} is fresh (${bundle.length} bytes)`);
} else {
  fs.writeFileSync(target, bundle);
  console.log(`bundle: wrote ${rel(target)} (${bundle.length} bytes)`);
}
