// What the call shows of itself and its controls, shared by room.html and doctor.html.
import { t } from '../i18n.js';
import { toast } from '../ui.js';
import { nextCamera } from './media.js';
import { Tiles } from './tiles.js';

const $ = (id) => document.getElementById(id);

/** The audio-only banner: who has dropped their video, and whether it was automatic. */
export function showMode({ local, remote }) {
  const banner = document.getElementById('call-audio-only');
  const text = local === 'audio' && remote === 'audio' ? t('room.audio_only_both')
    : local === 'audio' ? t('room.audio_only_mine') : remote === 'audio' ? t('room.audio_only_theirs') : '';
  banner.textContent = text;
  banner.hidden = !text;
  banner.dataset.local = local;
  banner.dataset.remote = remote;
}

/** What the page shows of `call`: a tile per remote participant, the reconnecting and
 * audio-only banners, and a toast when the SFU cannot be used. */
export function showCall(call) {
  const box = $('remote-tiles');
  box.replaceChildren();
  const tiles = new Tiles(box, () => call.people);
  call.tiles = tiles; // for the browser tests
  call.addEventListener('remote', (e) => tiles.show(e.detail.peerId, e.detail.stream));
  call.addEventListener('gone', (e) => tiles.remove(e.detail.peerId));
  call.addEventListener('remote_left', (e) => tiles.remove(e.detail.peerId, { final: false }));
  call.addEventListener('people', () => tiles.relabel());
  call.addEventListener('ended', () => tiles.clear());
  call.addEventListener('reconnecting', (e) => { $('call-reconnecting').hidden = !e.detail.on; });
  call.addEventListener('mode', (e) => showMode(e.detail));
  call.addEventListener('unsupported', () => toast(t('room.sfu_unsupported'), 'error', { timeoutMs: 0 }));
}

/** The mute, camera and switch-camera buttons of `call`, sending the local `stream`. */
export function wireCallControls(call, stream) {
  const mute = $('ctl-mute');
  mute.onclick = () => {
    const on = mute.getAttribute('aria-pressed') !== 'true';
    stream.getAudioTracks().forEach((tr) => { tr.enabled = !on; });
    mute.setAttribute('aria-pressed', String(on));
    mute.textContent = t(on ? 'room.unmute' : 'room.mute');
  };
  const cam = $('ctl-camera');
  cam.onclick = async () => {
    const off = cam.getAttribute('aria-pressed') !== 'true';
    stream.getVideoTracks().forEach((tr) => { tr.enabled = !off; });
    await call.setAudioOnly(off);
    cam.setAttribute('aria-pressed', String(off));
    cam.textContent = t(off ? 'room.camera_on' : 'room.camera_off');
  };
  $('ctl-switch').onclick = async () => {
    const track = await nextCamera(stream);
    if (!track) { toast(t('room.one_camera')); return; }
    const old = stream.getVideoTracks()[0];
    await call.replaceTrack(track);
    if (old) { stream.removeTrack(old); old.stop(); }
    stream.addTrack(track);
  };
}
