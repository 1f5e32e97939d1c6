// Reads JSONL cases {id, content_type, body_b64} on stdin; prints JSONL {id, ok, parts, error}.
// argv[2] = "busboy": npm busboy (multer, Express apps), defParamCharset utf8;
// argv[2] = "fastify": @fastify/busboy, which @fastify/multipart (Misskey) actually runs;
// argv[2] = "undici": Node's built-in `new Request(...).formData()`.
'use strict';
const crypto = require('crypto');
const readline = require('readline');

const sha = (buf) => crypto.createHash('sha256').update(buf).digest('hex');

// A field's value comes decoded with the part's charset (latin1 by default here, which keeps the bytes):
// report the bytes both ways, latin1 and UTF-8, and let the caller match either.
function pushField(parts, name, value) {
  const data = Buffer.from(value, 'latin1');
  parts.push({ name: name === undefined ? null : name, filename: null, sha256: sha(data), size: data.length, file: false,
               sha256_utf8: sha(Buffer.from(value, 'utf8')) });
}

function viaBusboy(contentType, body) {
  const busboy = require('busboy');
  return new Promise((resolve) => {
    const parts = [];
    let pending = 0;
    let closed = false;
    let failed = null;
    const finish = () => {
      if (failed) resolve({ ok: false, parts: [], error: String(failed && failed.message || failed) });
      else if (closed && pending === 0) resolve({ ok: true, parts });
    };
    let bb;
    try {
      bb = busboy({ headers: { 'content-type': contentType }, defParamCharset: 'utf8', defCharset: 'latin1' });
    } catch (e) {
      resolve({ ok: false, parts: [], error: String(e.message) });
      return;
    }
    bb.on('file', (name, stream, info) => {
      pending++;
      const chunks = [];
      stream.on('data', (c) => chunks.push(c));
      stream.on('error', (e) => { failed = e; });
      stream.on('end', () => {
        const data = Buffer.concat(chunks);
        parts.push({ name: name === undefined ? null : name, filename: info.filename === undefined ? null : info.filename, sha256: sha(data), size: data.length, file: true });
        pending--;
        finish();
      });
    });
    bb.on('field', (name, value) => pushField(parts, name, value));
    bb.on('error', (e) => { failed = e; resolve({ ok: false, parts: [], error: String(e.message) }); });
    bb.on('close', () => { closed = true; finish(); });
    try {
      bb.end(body);
    } catch (e) {
      // a throw out of the parser: the application's request fails
      failed = e;
      resolve({ ok: false, parts: [], error: String(e.message) });
    }
  });
}

function viaFastifyBusboy(contentType, body) {
  const { Busboy } = require('@fastify/busboy');
  return new Promise((resolve) => {
    const parts = [];
    let pending = 0;
    let finished = false;
    let done = false;
    // a body it cannot make sense of may leave it waiting for more: the application's request never ends
    const timer = setTimeout(() => settle({ ok: false, parts: [], error: 'parser never finished' }), 300);
    const settle = (result) => { if (!done) { done = true; clearTimeout(timer); resolve(result); } };
    const finish = () => { if (finished && pending === 0) settle({ ok: true, parts }); };
    let bb;
    try {
      bb = new Busboy({ headers: { 'content-type': contentType }, defParamCharset: 'utf8', defCharset: 'latin1' });
    } catch (e) {
      settle({ ok: false, parts: [], error: String(e.message) });
      return;
    }
    bb.on('file', (name, stream, filename) => {
      pending++;
      const chunks = [];
      stream.on('data', (c) => chunks.push(c));
      stream.on('error', (e) => settle({ ok: false, parts: [], error: String(e.message) }));
      stream.on('end', () => {
        const data = Buffer.concat(chunks);
        parts.push({ name: name === undefined ? null : name, filename: filename === undefined ? null : filename, sha256: sha(data), size: data.length, file: true });
        pending--;
        finish();
      });
    });
    bb.on('field', (name, value) => pushField(parts, name, value));
    bb.on('error', (e) => settle({ ok: false, parts: [], error: String(e.message) }));
    bb.on('finish', () => { finished = true; finish(); });
    try {
      bb.end(body);
    } catch (e) {
      settle({ ok: false, parts: [], error: String(e.message) });
    }
  });
}

async function viaUndici(contentType, body) {
  try {
    const req = new Request('http://localhost/upload', { method: 'POST', headers: { 'content-type': contentType }, body });
    const form = await req.formData();
    const parts = [];
    for (const [name, value] of form.entries()) {
      if (typeof value === 'string') {
        // undici decodes field values as UTF-8: the bytes are gone, so the caller compares decoded text
        const data = Buffer.from(value, 'utf8');
        parts.push({ name, filename: null, sha256: sha(data), size: data.length, file: false, text: true });
      } else {
        const data = Buffer.from(await value.arrayBuffer());
        parts.push({ name, filename: value.name, sha256: sha(data), size: data.length, file: true });
      }
    }
    return { ok: true, parts };
  } catch (e) {
    return { ok: false, parts: [], error: String(e && e.message || e) };
  }
}

async function main() {
  const which = process.argv[2];
  const parse = { undici: viaUndici, busboy: viaBusboy, fastify: viaFastifyBusboy }[which];
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  for await (const line of rl) {
    if (!line.trim()) continue;
    const c = JSON.parse(line);
    const result = await parse(c.content_type, Buffer.from(c.body_b64, 'base64'));
    process.stdout.write(JSON.stringify({ id: c.id, ...result }) + '\n');
  }
}

main();
