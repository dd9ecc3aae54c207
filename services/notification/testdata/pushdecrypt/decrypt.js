// Decrypts one Web Push message (RFC 8291: aes128gcm, the sender's key in
// the header) with Mozilla's http_ece, for the notification service's
// tests. Reads one JSON object on standard input,
//   {"private_key":"<base64url, 32 bytes>","auth":"<base64url>","body":"<base64 of the request body>"}
// and prints the plaintext; exits 1 with the reason on standard error when
// the message does not decrypt.
'use strict';
const crypto = require('crypto');
const ece = require('http_ece');

let input = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => { input += chunk; });
process.stdin.on('end', () => {
  try {
    const req = JSON.parse(input);
    const receiver = crypto.createECDH('prime256v1');
    receiver.setPrivateKey(Buffer.from(req.private_key, 'base64url'));
    const plaintext = ece.decrypt(Buffer.from(req.body, 'base64'), {
      version: 'aes128gcm',
      privateKey: receiver,
      authSecret: Buffer.from(req.auth, 'base64url'),
    });
    process.stdout.write(plaintext);
  } catch (err) {
    process.stderr.write(`decrypt: ${err.message}\n`);
    process.exit(1);
  }
});
