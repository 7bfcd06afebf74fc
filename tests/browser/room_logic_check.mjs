// Runs the room's pure modules (static/js/room/quality.js, netprobe.js's figures, people.js) under
// Node for tests/browser/test_room_logic_node.py. argv[2]: the static folder; stdin: one
// JSON command; stdout: one JSON answer.
import { pathToFileURL } from 'node:url';
import { readFileSync } from 'node:fs';

const root = process.argv[2];
const quality = await import(pathToFileURL(`${root}/js/room/quality.js`).href);
const probe = await import(pathToFileURL(`${root}/js/room/netprobe.js`).href);
const people = await import(pathToFileURL(`${root}/js/room/people.js`).href);
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
  if (cmd.op === 'people') {
    // The roster as call.js learns it (answers, peer_joined), then whose each remote
    // stream is: LiveKit identities, Janus mids; and what each tile says.
    const known = new Map();
    for (const views of cmd.learn) people.learn(known, views);
    const t = (key) => `t:${key}`;
    return {
      people: Object.fromEntries(known),
      identities: cmd.identities.map((id) => people.peerOfIdentity(known, id)),
      mids: cmd.mids.map((mid) => people.peerOfMid(cmd.streams, mid)),
      labels: [...known.values()].map((p) => people.labelOf(p, t)),
      initials: cmd.names.map((n) => people.initials(n)),
    };
  }
  throw new Error(`unknown op ${cmd.op}`);
}

process.stdout.write(JSON.stringify(answer()));
