// What the call shows of itself, shared by room.html and doctor.html.
import { t } from '../i18n.js';

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
