// The pre-call network test in the browser (docs/rtc.md): an offer with an unreliable data
// channel and the camera and microphone, answered by the server's own peer, which echoes
// pings and media. Pings 20 a second for 3 s; the figures are the Python probe's
// (teleconsult/client/probe.py), reported to the server, which shows them to the doctor.
const PING_MAGIC = [0x74, 0x63, 0x6e, 0x74]; // "tcnt"
const PING_BYTES = 64;

function waitGathered(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === 'complete') { clearTimeout(timer); resolve(); } };
    const timer = setTimeout(resolve, timeoutMs);
    pc.addEventListener('icegatheringstatechange', done);
  });
}

function percentile(sorted, p) {
  if (!sorted.length) return null;
  const k = (sorted.length - 1) * p;
  const lo = Math.floor(k);
  const hi = Math.ceil(k);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (k - lo);
}

const ms = (s) => (s == null ? null : Math.round(s * 1e6) / 1e3);

export function pingFigures(sent, rtts) {
  const loss = sent ? 1 - rtts.length / sent : 0;
  if (!rtts.length) {
    return { pings_sent: sent, pings_echoed: 0, loss: Math.round(loss * 1e4) / 1e4, rtt_ms_min: null, rtt_ms_p50: null, rtt_ms_p95: null, rtt_ms_max: null, jitter_ms: null };
  }
  const sorted = [...rtts].sort((a, b) => a - b);
  let jitter = 0;
  for (let i = 1; i < rtts.length; i += 1) jitter += (Math.abs(rtts[i] - rtts[i - 1]) - jitter) / 16;
  return {
    pings_sent: sent, pings_echoed: rtts.length, loss: Math.round(loss * 1e4) / 1e4,
    rtt_ms_min: ms(sorted[0]), rtt_ms_p50: ms(percentile(sorted, 0.5)),
    rtt_ms_p95: ms(percentile(sorted, 0.95)), rtt_ms_max: ms(sorted[sorted.length - 1]),
    jitter_ms: ms(jitter),
  };
}

async function counters(pc) {
  const stats = await pc.getStats();
  let bytes = 0;
  let packets = 0;
  let lost = 0;
  let jitter = null;
  const frames = { audio: 0, video: 0 };
  stats.forEach((s) => {
    if (s.type === 'transport') bytes += s.bytesReceived ?? 0;
    if (s.type === 'inbound-rtp') {
      packets += s.packetsReceived ?? 0;
      lost += Math.max(0, s.packetsLost ?? 0);
      if (s.jitter != null) jitter = Math.max(jitter ?? 0, s.jitter);
      if (s.kind === 'video') frames.video += s.framesDecoded ?? 0;
      if (s.kind === 'audio') frames.audio += Math.round((s.totalSamplesReceived ?? 0) / 960);
    }
  });
  return { at: performance.now() / 1000, bytes, packets, lost, jitter, frames };
}

/**
 * Run the test for `appointmentId` with `stream` (camera and microphone, may be null).
 * `api` is static/js/api.js's. Resolves to the stored test (with the client's figures).
 */
export async function runNetworkTest({ api, appointmentId, stream, seconds = 3, rate = 20, onProgress }) {
  const pc = new RTCPeerConnection({ iceServers: [] });
  const channel = pc.createDataChannel('network-test', { ordered: false, maxRetransmits: 0 });
  channel.binaryType = 'arraybuffer';
  for (const kind of ['audio', 'video']) {
    const track = stream?.getTracks().find((t) => t.kind === kind);
    if (track) pc.addTrack(track, stream);
    else pc.addTransceiver(kind, { direction: 'sendrecv' });
  }
  const sent = new Map();
  const rtts = new Map();
  channel.onmessage = (e) => {
    const v = new DataView(e.data);
    if (v.byteLength >= 8 && PING_MAGIC.every((b, i) => v.getUint8(i) === b)) {
      const seq = v.getUint32(4);
      if (sent.has(seq) && !rtts.has(seq)) rtts.set(seq, performance.now() / 1000 - sent.get(seq));
    }
  };
  try {
    await pc.setLocalDescription(await pc.createOffer());
    await waitGathered(pc);
    const started = await api(`/api/v1/appointments/${appointmentId}/network-tests`, {
      method: 'POST', body: { sdp: pc.localDescription.sdp, type: 'offer' }, timeoutMs: 20000, retries: 1,
    });
    await pc.setRemoteDescription({ type: 'answer', sdp: started.sdp });
    await new Promise((resolve, reject) => {
      if (channel.readyState === 'open') { resolve(); return; }
      const timer = setTimeout(() => reject(new Error('network test: no connection')), 10000);
      channel.onopen = () => { clearTimeout(timer); resolve(); };
    });
    const before = await counters(pc);
    const count = Math.max(1, Math.round(seconds * rate));
    for (let i = 0; i < count && channel.readyState === 'open'; i += 1) {
      const wait = before.at + i / rate - performance.now() / 1000;
      if (wait > 0) await new Promise((r) => setTimeout(r, wait * 1000));
      const buf = new ArrayBuffer(PING_BYTES);
      const v = new DataView(buf);
      PING_MAGIC.forEach((b, j) => v.setUint8(j, b));
      v.setUint32(4, i);
      sent.set(i, performance.now() / 1000);
      channel.send(buf);
      onProgress?.((i + 1) / count);
    }
    const graceEnd = performance.now() + 1000;
    while (rtts.size < sent.size && performance.now() < graceEnd) await new Promise((r) => setTimeout(r, 50));
    const after = await counters(pc);
    const elapsed = Math.max(0.001, after.at - before.at);
    const order = [...sent.keys()].filter((s) => rtts.has(s)).map((s) => rtts.get(s));
    const report = {
      duration_s: Math.round(elapsed * 1000) / 1000,
      ...pingFigures(sent.size, order),
      bitrate_bps: Math.round(((after.bytes - before.bytes) * 8 / elapsed) * 10) / 10,
      media_packets_received: Math.max(0, after.packets - before.packets),
      media_packets_lost: Math.max(0, after.lost - before.lost),
      media_jitter_ms: after.jitter == null ? null : Math.round(after.jitter * 1e6) / 1e3,
      audio_frames: after.frames.audio,
      video_frames: after.frames.video,
    };
    return await api(`/api/v1/network-tests/${started.id}/result`, { method: 'POST', body: report, retries: 2 });
  } finally {
    channel.close();
    pc.close();
  }
}
