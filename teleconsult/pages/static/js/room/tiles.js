// One tile per remote participant (docs/room.md, "Tiles"): a <video> with the person's
// name as its visible label and aria-label, their initials while they send no video, and
// all their audio through that element. Peer to peer (one other person) it is one big
// video, as before; the grid (css/room.css) puts two per row from 480 px.
import { t } from '../i18n.js';
import { el } from '../ui.js';
import { initials, labelOf } from './people.js';

export class Tiles {
  /** `box`: the #remote-tiles container; `people()`: peer id -> person, as the call knows. */
  constructor(box, people) {
    this.box = box;
    this.people = people;
    this.tiles = new Map(); // peer id -> {node, video, caption, face, stream}
    this.left = new Set(); // peers gone: a late track of theirs makes no tile again
    this.count();
  }

  count() {
    this.box.dataset.count = String(this.tiles.size);
  }

  /** A stream of `peerId` arrived (a new one, or more tracks of it). */
  show(peerId, stream) {
    if (!peerId || this.left.has(peerId)) return;
    let tile = this.tiles.get(peerId);
    if (!tile) {
      const video = el('video', { autoplay: true, playsinline: true });
      const caption = el('figcaption', { class: 'tile-name' });
      const face = el('span', { class: 'tile-face', 'aria-hidden': 'true', hidden: true });
      const node = el('figure', { class: 'tile', dataset: { peer: peerId } }, video, face, caption);
      tile = { node, video, caption, face, stream: null, watched: new Set() };
      this.tiles.set(peerId, tile);
      this.box.append(node);
      this.count();
    }
    this.label(peerId);
    if (tile.stream !== stream) {
      tile.stream = stream;
      tile.video.srcObject = stream;
      tile.video.play?.().catch(() => { /* autoplay: it starts when allowed */ });
      stream.addEventListener('addtrack', () => { this.watch(tile); this.face(tile); });
    }
    this.watch(tile);
    this.face(tile);
  }

  /** The person's name (or role) on the tile, as text and as the video's aria-label. */
  label(peerId) {
    const tile = this.tiles.get(peerId);
    if (!tile) return;
    const name = labelOf(this.people().get(peerId), t);
    tile.caption.textContent = name;
    tile.video.setAttribute('aria-label', t('room.tile_video', { name }));
    tile.face.textContent = initials(name);
  }

  relabel() {
    for (const peerId of this.tiles.keys()) this.label(peerId);
  }

  /** Follow the tracks: a video that stops (muted, ended, none) shows the initials. */
  watch(tile) {
    for (const track of tile.stream?.getTracks() ?? []) {
      if (tile.watched.has(track)) continue;
      tile.watched.add(track);
      for (const name of ['mute', 'unmute', 'ended']) track.addEventListener(name, () => this.face(tile));
    }
  }

  face(tile) {
    const video = (tile.stream?.getVideoTracks() ?? []).some((tr) => tr.readyState === 'live' && !tr.muted);
    tile.face.hidden = video;
    tile.node.dataset.video = String(video);
  }

  /** `peerId` left the room or was removed (`final`: a late track of theirs makes no tile
   * again), or only their media went (LiveKit's participant disconnected): its tile goes. */
  remove(peerId, { final = true } = {}) {
    if (!peerId) return;
    if (final) this.left.add(peerId);
    const tile = this.tiles.get(peerId);
    if (!tile) return;
    tile.video.srcObject = null;
    tile.node.remove();
    this.tiles.delete(peerId);
    this.count();
  }

  clear() {
    for (const peerId of [...this.tiles.keys()]) this.remove(peerId);
    this.left.clear();
  }
}
