// Writes the photo on stdin as Node's fetch/undici sends a FormData (Misskey's and other Node clients'
// uploads): {content_type, body_b64} on stdout.
'use strict';
const chunks = [];
process.stdin.on('data', (c) => chunks.push(c));
process.stdin.on('end', async () => {
  const fd = new FormData();
  fd.append('description', 'a cup of coffee');
  fd.append('file', new Blob([Buffer.concat(chunks)], { type: 'image/jpeg' }), 'café (1).jpg');
  const res = new Response(fd);
  const body = Buffer.from(await res.arrayBuffer());
  process.stdout.write(JSON.stringify({ content_type: res.headers.get('content-type'), body_b64: body.toString('base64') }) + '\n');
});
