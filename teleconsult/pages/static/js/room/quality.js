// When a call drops to audio only, and when it comes back to video (docs/room.md).
// Pure: samples in, decision out, so the thresholds are easy to read and to test.

export const THRESHOLDS = Object.freeze({
  // Below this, video is a slideshow that steals bandwidth from the voice (VP8 at the
  // smallest useful size needs about 100-150 kbit/s; Opus speech about 30).
  downBps: 150_000,
  // Above this loss, video freezes and retransmissions crowd the link; Opus with FEC
  // still carries speech.
  downLoss: 0.10,
  // Coming back needs clearly better figures (hysteresis), held longer, so a link near
  // the edge does not flap between modes.
  upBps: 300_000,
  upLoss: 0.03,
  samplesDown: 2, // consecutive bad samples (one sample every 2 s): 4 s
  samplesUp: 5, // consecutive good samples: 10 s
});

/** A decider fed one `{bps, loss}` sample at a time; returns 'video' or 'audio'. */
export function qualityDecider(limits = THRESHOLDS) {
  let mode = 'video';
  let bad = 0;
  let good = 0;
  return function decide({ bps, loss }) {
    const poor = (bps != null && bps < limits.downBps) || (loss != null && loss > limits.downLoss);
    const fine = (bps == null || bps >= limits.upBps) && (loss == null || loss <= limits.upLoss);
    bad = poor ? bad + 1 : 0;
    good = fine ? good + 1 : 0;
    if (mode === 'video' && bad >= limits.samplesDown) { mode = 'audio'; good = 0; }
    if (mode === 'audio' && good >= limits.samplesUp) { mode = 'video'; bad = 0; }
    return mode;
  };
}

/**
 * One sample from two getStats() reports `interval` apart: the estimated outgoing
 * bandwidth of the selected candidate pair (what the sender may use) and the fraction of
 * inbound RTP packets lost in the interval, all tracks together.
 */
export function sampleOf(before, after) {
  let bps = null;
  let received = 0;
  let lost = 0;
  after.forEach((s) => {
    if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded' && s.availableOutgoingBitrate != null) {
      bps = s.availableOutgoingBitrate;
    }
    if (s.type === 'inbound-rtp') {
      const prev = before?.get(s.id);
      received += (s.packetsReceived ?? 0) - (prev?.packetsReceived ?? 0);
      lost += Math.max(0, (s.packetsLost ?? 0) - (prev?.packetsLost ?? 0));
    }
  });
  const total = received + lost;
  return { bps, loss: total > 0 ? lost / total : null };
}
