// Who is who in a call, without the DOM (tests/browser/test_room_logic_node.py runs it
// under Node): the roster's people by peer id, the peer a remote stream belongs to (a
// peer-to-peer link's own peer, a Janus stream's mid, a LiveKit participant's identity),
// and what a tile shows of a person.

/** The /signal view of a peer ({peer_id, role, user_id?, name?}) as the page keeps it. */
export function personOf(view) {
  return { peerId: view.peer_id, role: view.role ?? null, userId: view.user_id ?? null, name: view.name ?? '' };
}

/** Remember `views` (a join answer's peers, a peer_joined) in `people` (peer id -> person);
 * a view without a field keeps what was known of it. */
export function learn(people, views) {
  for (const view of views ?? []) {
    if (!view?.peer_id) continue;
    const known = people.get(view.peer_id);
    const fresh = personOf(view);
    people.set(view.peer_id, known ? {
      ...known, role: fresh.role ?? known.role, userId: fresh.userId ?? known.userId, name: fresh.name || known.name,
    } : fresh);
  }
  return people;
}

/** The peer whose SFU identity (our user id, as text) is `identity`: a LiveKit participant.
 * Someone the roster does not know (yet) still gets a key of their own. */
export function peerOfIdentity(people, identity) {
  for (const [peerId, person] of people) if (person.userId === identity) return peerId;
  return `identity:${identity}`;
}

/** Janus's subscribe answer lists `streams: [{mid, peer_id}]`: the peer of a track
 * received on the transceiver with that mid (null: not one of the listed streams). */
export function peerOfMid(streams, mid) {
  if (mid == null) return null;
  return (streams ?? []).find((s) => String(s.mid) === String(mid))?.peer_id ?? null;
}

/** Up to two letters for an audio-only tile: first and last word's first letter. */
export function initials(name) {
  const words = String(name ?? '').trim().split(/\s+/u).filter(Boolean);
  if (!words.length) return '?';
  const first = [...words[0]][0];
  const last = words.length > 1 ? [...words[words.length - 1]][0] : '';
  return (first + last).toLocaleUpperCase();
}

/** A tile's label: the person's name, else their role ('room.person_<role>'), through `t`. */
export function labelOf(person, t) {
  if (person?.name) return person.name;
  const role = ['doctor', 'patient', 'guest'].includes(person?.role) ? person.role : 'unknown';
  return t(`room.person_${role}`);
}
