// The patient's device and network check: camera preview, microphone level, speaker test
// and the server's network test, in under a minute. Returns a summary for the page; the
// network figures are stored by the server, which shows them to the doctor.
import { t } from '../i18n.js';
import { chime, meterMicrophone } from './media.js';
import { runNetworkTest } from './netprobe.js';

const $ = (id) => document.getElementById(id);

export function summarise(test) {
  const c = test?.client;
  if (!c) return null;
  return {
    rttMs: c.rtt_ms_p50, loss: c.loss, kbps: Math.round(c.bitrate_bps / 1000),
  };
}

export function figuresText(test) {
  const s = summarise(test);
  if (!s) return t('check.no_figures');
  return t('check.figures', {
    rtt: s.rttMs == null ? '—' : Math.round(s.rttMs), loss: Math.round(s.loss * 100), kbps: s.kbps,
  });
}

/** Run the whole check with `stream`; resolves when the network test is done. */
export async function runCheck({ api, appointmentId, stream }) {
  const preview = $('check-preview');
  preview.srcObject = stream;
  const hasVideo = stream.getVideoTracks().length > 0;
  $('check-camera').textContent = hasVideo ? t('check.camera_ok') : t('check.camera_none');
  let heardSomething = false;
  const stopMeter = meterMicrophone(stream, (level, peak) => {
    $('check-mic').value = level;
    if (peak > 0.02 && !heardSomething) {
      heardSomething = true;
      $('check-mic-result').textContent = t('check.mic_ok');
    }
  });
  $('check-mic-result').textContent = t('check.mic_speak');
  const speaker = $('check-speaker');
  const heard = $('check-speaker-ok');
  speaker.onclick = async () => {
    await chime();
    heard.hidden = false;
    heard.focus();
  };
  heard.onclick = () => {
    $('check-speaker-result').textContent = t('check.speaker_ok');
    heard.hidden = true;
  };
  $('check-net-result').textContent = t('check.network_running');
  try {
    const test = await runNetworkTest({
      api, appointmentId, stream, onProgress: (f) => { $('check-net-progress').value = f; },
    });
    $('check-net-progress').value = 1;
    $('check-net-result').textContent = figuresText(test);
    return test;
  } catch (err) {
    $('check-net-result').textContent = t('check.network_failed');
    throw err;
  } finally {
    setTimeout(stopMeter, 5000);
  }
}
