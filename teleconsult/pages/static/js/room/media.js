// The local camera and microphone: open, meter, switch camera, and the speaker test.

export async function openMedia({ video = true } = {}) {
  return navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true },
    video: video ? { width: { ideal: 640 }, height: { ideal: 360 }, frameRate: { ideal: 15 } } : false,
  });
}

/** Calls `onLevel(0..1)` about ten times a second until the returned function is called. */
export function meterMicrophone(stream, onLevel) {
  const ctx = new AudioContext();
  const source = ctx.createMediaStreamSource(stream);
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 512;
  source.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  let peak = 0;
  const timer = setInterval(() => {
    analyser.getFloatTimeDomainData(buf);
    let sum = 0;
    for (const v of buf) sum += v * v;
    const level = Math.min(1, Math.sqrt(sum / buf.length) * 4);
    peak = Math.max(peak, level);
    onLevel(level, peak);
  }, 100);
  return () => { clearInterval(timer); ctx.close(); };
}

/** Plays a short two-tone chime on the speakers (the speaker test and the knock sound). */
export async function chime({ volume = 0.2, tones = [660, 880] } = {}) {
  const ctx = new AudioContext();
  try {
    if (ctx.state === 'suspended') await ctx.resume();
    const gain = ctx.createGain();
    gain.gain.value = volume;
    gain.connect(ctx.destination);
    tones.forEach((freq, i) => {
      const osc = ctx.createOscillator();
      osc.frequency.value = freq;
      osc.connect(gain);
      osc.start(ctx.currentTime + i * 0.25);
      osc.stop(ctx.currentTime + i * 0.25 + 0.2);
    });
    await new Promise((r) => setTimeout(r, tones.length * 250 + 100));
    return true;
  } catch {
    return false;
  } finally {
    ctx.close();
  }
}

/** The next camera after the current one (front/back on a phone); null with only one. */
export async function nextCamera(stream) {
  const cams = (await navigator.mediaDevices.enumerateDevices()).filter((d) => d.kind === 'videoinput');
  if (cams.length < 2) return null;
  const current = stream.getVideoTracks()[0]?.getSettings().deviceId;
  const index = cams.findIndex((c) => c.deviceId === current);
  const next = cams[(index + 1) % cams.length];
  const fresh = await navigator.mediaDevices.getUserMedia({ video: { deviceId: { exact: next.deviceId } } });
  return fresh.getVideoTracks()[0];
}
