/**
 * Binary publications (docs/protocol.md section 6.1, "binary pub"): `0x01`, then the topic,
 * the offset and the key, each as a length byte and its bytes (length 0: none), then the
 * payload.
 */

export interface BinaryPublication {
  topic: string;
  offset: string | null;
  key: string | null;
  data: Uint8Array;
}

/** The first byte of a binary publication (binary format version 1). */
export const BINARY_PUB = 0x01;

const utf8 = new TextDecoder("utf-8", { fatal: true });

/**
 * Decodes a binary frame. Returns null for a frame whose first byte is not `0x01` (a
 * client ignores those); throws a TypeError for a publication that is cut short or whose
 * fields are not valid text. The payload is a view into `frame`, not a copy.
 */
export function decodeBinaryPublication(frame: Uint8Array): BinaryPublication | null {
  if (frame.length === 0 || frame[0] !== BINARY_PUB) return null;
  let at = 1;
  const field = (name: string): string | null => {
    if (at >= frame.length) throw new TypeError(`binary publication cut before its ${name}`);
    const len = frame[at]!;
    const end = at + 1 + len;
    if (end > frame.length) throw new TypeError(`binary publication's ${name} runs past the frame`);
    const text = len === 0 ? null : utf8.decode(frame.subarray(at + 1, end));
    at = end;
    return text;
  };
  const topic = field("topic");
  if (topic === null) throw new TypeError("binary publication without a topic");
  const offset = field("offset");
  const key = field("key");
  return { topic, offset, key, data: frame.subarray(at) };
}

/** Encodes a binary publication (the inverse of {@link decodeBinaryPublication}; used by tests and tools). */
export function encodeBinaryPublication(p: { topic: string; offset?: string | null; key?: string | null; data: Uint8Array }): Uint8Array {
  const enc = new TextEncoder();
  const parts = [p.topic, p.offset ?? "", p.key ?? ""].map((s) => enc.encode(s));
  for (const b of parts) if (b.length > 255) throw new RangeError("field longer than 255 bytes");
  const out = new Uint8Array(1 + parts.reduce((n, b) => n + 1 + b.length, 0) + p.data.length);
  out[0] = BINARY_PUB;
  let at = 1;
  for (const b of parts) {
    out[at++] = b.length;
    out.set(b, at);
    at += b.length;
  }
  out.set(p.data, at);
  return out;
}

/** Base64 (as in history replies' `"encoding":"base64"`) to bytes. */
export function base64ToBytes(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
