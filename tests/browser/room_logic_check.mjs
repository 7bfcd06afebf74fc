// Runs the room's pure modules (static/js/room/quality.js, netprobe.js's figures) under
// Node for tests/browser/test_room_logic_node.py. argv[2]: the static folder; stdin: one
// JSON command; stdout: one JSON answer.
import { pathToFileURL } from 'node:url';
import { readFileSync } from 'node:fs';

const root = process.argv[2];
const quality = await import(pathToFileURL(`${root}/js/room/quality.js`).href);
const probe = await import(pathToFileURL(`${root}/js/room/netprobe.js`).href);
const cmd = JSON.parse(readFileSync(0, 'utf8'));

function answer() {
  if (cmd.op === 'modes') {
    const decide = quality.qualityDecider();
    return { modes: cmd.samples.map((s) => decide(s)), thresholds: quality.THRESHOLDS };
  }
  if (cmd.op === 'sample') {
    const toMap = (list) => (list ? new Map(list.map((s) => [s.id, s])) : null);
    return quality.sampleOf(toMap(cmd.before), toMap(cmd.after));
  }
  if (cmd.op === 'pings') return probe.pingFigures(cmd.sent, cmd.rtts);
  throw new Error(`unknown op ${cmd.op}`);
}

process.stdout.write(JSON.stringify(answer()));
