// Microphone recording for the search page, turned into a file the server can read.
//
// Browsers record webm/opus (Chromium, Firefox) or mp4/aac (Safari), which the server does not
// decode, so a finished recording is decoded here, mixed to mono, resampled to 16 kHz and uploaded
// as 16-bit PCM WAV. This module knows nothing of the page: it takes no element and sets no text;
// every failure is an Error whose message can be shown to the user as it is.

export const MAX_RECORD_SECONDS = 30;
// What the encoders use; also keeps a 30 s upload under 1 MB.
export const RECORD_SAMPLE_RATE = 16000;

/** Start recording from the microphone; resolves to a Recording once the browser gave access. */
export async function startRecording() {
  if (!window.isSecureContext || !navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
    throw new Error("Recording needs microphone access, which browsers only give to https:// pages or "
      + "localhost. Open the page that way, or search with a sound file instead.");
  }
  if (typeof MediaRecorder === "undefined") {
    throw new Error("This browser cannot record sound. Search with a sound file instead.");
  }
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ audio: true });
  } catch (error) {
    throw new Error(microphoneProblem(error));
  }
  try {
    return new Recording(stream);
  } catch (error) {
    // MediaRecorder refused this stream: release the microphone, or its indicator stays on.
    stopTracks(stream);
    throw new Error(`This browser cannot record from the microphone: ${describe(error)}.`);
  }
}

/**
 * One running recording. `file` settles once, when recording ends (on `stop()`, or because the
 * microphone went away): with the recording as a WAV File, or with an Error to show.
 */
class Recording {
  constructor(stream) {
    const recorder = new MediaRecorder(stream);
    const chunks = [];
    const blob = new Promise((resolve, reject) => {
      recorder.addEventListener("dataavailable", (event) => { if (event.data.size) chunks.push(event.data); });
      recorder.addEventListener("error", (event) => {
        stopTracks(stream);
        reject(new Error(`The recording failed: ${describe(event.error)}.`));
      });
      recorder.addEventListener("stop", () => {
        stopTracks(stream);
        resolve(new Blob(chunks, { type: recorder.mimeType }));
      });
    });
    this.file = blob.then(async (recorded) => {
      try {
        return new File([await recordingToWav(recorded)], "recording.wav", { type: "audio/wav" });
      } catch (error) {
        throw new Error(`The recording could not be read: ${describe(error)}.`);
      }
    });
    this.recorder = recorder;
    this.started = performance.now();
    recorder.start();
  }

  get seconds() {
    return (performance.now() - this.started) / 1000;
  }

  stop() {
    if (this.recorder.state !== "inactive") this.recorder.stop();
  }
}

function stopTracks(stream) {
  stream.getTracks().forEach((track) => track.stop());
}

function describe(error) {
  return error && error.message ? error.message : String(error || "unknown error");
}

function microphoneProblem(error) {
  switch (error && error.name) {
    case "NotAllowedError":
    case "SecurityError":
      return "Microphone access was denied. Allow it in the browser's site settings to record, "
        + "or search with a sound file instead.";
    case "NotFoundError":
    case "OverconstrainedError":
      return "No microphone was found. Search with a sound file instead.";
    case "NotReadableError":
      return "The microphone is busy in another application.";
    default:
      return `The microphone could not start: ${describe(error)}.`;
  }
}

/** Decode whatever the browser recorded into a mono 16 kHz WAV file's bytes. */
export async function recordingToWav(blob) {
  const bytes = await blob.arrayBuffer();
  if (!bytes.byteLength) throw new Error("nothing was recorded");
  // decodeAudioData resamples to its context's rate, so this context does the resampling.
  const context = new OfflineAudioContext(1, 1, RECORD_SAMPLE_RATE);
  const buffer = await context.decodeAudioData(bytes);
  const mono = mixToMono(buffer);
  if (!mono.length) throw new Error("the recording is empty");
  return encodeWav(mono, buffer.sampleRate);
}

/** The average of an AudioBuffer's channels. */
export function mixToMono(buffer) {
  const mono = new Float32Array(buffer.length);
  for (let channel = 0; channel < buffer.numberOfChannels; channel++) {
    const samples = buffer.getChannelData(channel);
    for (let i = 0; i < samples.length; i++) mono[i] += samples[i] / buffer.numberOfChannels;
  }
  return mono;
}

/** A mono 16-bit PCM WAV file (44-byte RIFF header, then little-endian samples). */
export function encodeWav(samples, sampleRate) {
  const dataBytes = samples.length * 2;
  const view = new DataView(new ArrayBuffer(44 + dataBytes));
  const ascii = (offset, text) => {
    for (let i = 0; i < text.length; i++) view.setUint8(offset + i, text.charCodeAt(i));
  };
  ascii(0, "RIFF");
  view.setUint32(4, 36 + dataBytes, true);   // size of everything after this field
  ascii(8, "WAVE");
  ascii(12, "fmt ");
  view.setUint32(16, 16, true);               // fmt chunk size for PCM
  view.setUint16(20, 1, true);                // format 1: integer PCM
  view.setUint16(22, 1, true);                // channels
  view.setUint32(24, sampleRate, true);
  view.setUint32(28, sampleRate * 2, true);   // byte rate: rate * channels * 2 bytes
  view.setUint16(32, 2, true);                // block align: channels * 2 bytes
  view.setUint16(34, 16, true);               // bits per sample
  ascii(36, "data");
  view.setUint32(40, dataBytes, true);
  for (let i = 0; i < samples.length; i++) {
    const sample = Math.max(-1, Math.min(1, samples[i]));
    view.setInt16(44 + i * 2, Math.round(sample < 0 ? sample * 0x8000 : sample * 0x7fff), true);
  }
  return view.buffer;
}
