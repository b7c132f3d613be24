// The metadata_props of an ONNX file, read from its protobuf bytes (ModelProto field 14, each a
// StringStringEntryProto: key = 1, value = 2). The graph (field 7) is skipped by its length, unread.

function varint(bytes, at) {
  let value = 0, scale = 1, b;
  do {
    if (at >= bytes.length) throw new Error("truncated ONNX file");
    b = bytes[at++];
    value += (b & 0x7f) * scale;
    scale *= 128;
  } while (b & 0x80);
  return [value, at];
}

// (field number, wire type, payload start, payload end) for each field of one message
function* fields(bytes, start, end) {
  let at = start;
  while (at < end) {
    let tag;
    [tag, at] = varint(bytes, at);
    const field = Math.floor(tag / 8), wire = tag % 8;
    if (wire === 0) { const from = at; [, at] = varint(bytes, at); yield [field, wire, from, at]; }
    else if (wire === 1) { yield [field, wire, at, at + 8]; at += 8; }
    else if (wire === 5) { yield [field, wire, at, at + 4]; at += 4; }
    else if (wire === 2) {
      let n;
      [n, at] = varint(bytes, at);
      if (at + n > end) throw new Error("truncated ONNX file");
      yield [field, wire, at, at + n];
      at += n;
    } else throw new Error(`not an ONNX file (protobuf wire type ${wire})`);
  }
}

export function metadataProps(bytes) {
  const text = new TextDecoder("utf-8", { fatal: true }), props = {};
  for (const [field, wire, from, to] of fields(bytes, 0, bytes.length)) {
    if (field !== 14 || wire !== 2) continue;
    let key = null, value = "";
    for (const [f, w, a, b] of fields(bytes, from, to)) {
      if (w !== 2) continue;
      if (f === 1) key = text.decode(bytes.subarray(a, b));
      if (f === 2) value = text.decode(bytes.subarray(a, b));
    }
    if (key !== null) props[key] = value;
  }
  return props;
}
