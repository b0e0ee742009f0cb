// The seed's refresh path, in plain JavaScript, as a one-shot command for the benchmark:
// `node bench/seed-refresh.mjs` does what `claude-tokend --once` does, the way the seed sketch
// (shared/seed-anthropic-oauth-cli.txt, "Refresh Tokens (recommended)") would do it: read
// ~/.claude/.credentials.json, refresh if due, write the file, exit.
//
// It is a line-by-line port of the seed's TypeScript (types removed), flaws included, so the
// benchmark compares against what the project started from and not against a better program.
// Only three things differ, each marked CHANGED below:
//   1. the token URL comes from CLAUDE_TOKEND_TOKEN_URL (the benchmark's loopback endpoint);
//   2. isExpired uses claude-tokend's default lead, 15 minutes, instead of the seed's 60 s skew,
//      so both programs refresh the same token in the refresh case and skip it in the fresh one;
//   3. the seed has no reader and no entry point (its ensureFresh takes tokens in hand), so this
//      file adds the smallest ones: JSON.parse of the file, then ensureFresh on claudeAiOauth.
// No dependencies; Node 18+ (global fetch).
//
// The seed's flaws, kept on purpose (claude-tokend avoids each one):
//   - saveClaudeCredentials rewrites the whole file as {claudeAiOauth: tokens}: every other
//     top-level key (mcpOAuth, ...) is lost, and so is every other field of claudeAiOauth
//     (scopes, subscriptionType, rateLimitTier, ...), because refreshTokens returns only three.
//   - writeFile truncates and writes in place: not atomic, despite the seed's own advice to
//     "rewrite the file atomically". A crash or a concurrent reader (Claude Code) can see an
//     empty or half-written file.
//   - A new file is created with the umask's mode (often 0644) and chmod'ed to 0600 only after
//     the tokens are in it; mkdir does not make ~/.claude 0700.
//   - No lock between processes: inFlight deduplicates within one process only, so two
//     refreshers (or this and Claude Code) can spend the same rotating refresh token.
//   - fetch has no timeout; any non-2xx is one error (no retry, no 429/5xx backoff, no
//     Retry-After); a 2xx without access_token writes a file with no accessToken at all.
//   - expiresAt is anchored to the time the response arrived, not the time it was sent.

import { homedir } from 'node:os';
import { join } from 'node:path';
import { mkdir, writeFile, chmod, readFile } from 'node:fs/promises';

const CLIENT_ID = process.env.ANTHROPIC_CLIENT_ID || '9d1c250a-e61b-44d9-88ed-5944d1962f5e';
// CHANGED (1): the seed hard-codes https://console.anthropic.com/v1/oauth/token.
const TOKEN_URL = process.env.CLAUDE_TOKEND_TOKEN_URL || 'https://console.anthropic.com/v1/oauth/token';
// CHANGED (2): the seed uses 60_000 (60 s skew); claude-tokend's default refresh lead is 15 min.
const LEAD_MS = 15 * 60_000;

async function saveClaudeCredentials(tokens) {
  const dir = join(homedir(), '.claude');
  const file = join(dir, '.credentials.json');
  await mkdir(dir, { recursive: true });
  const payload = { claudeAiOauth: tokens };
  await writeFile(file, JSON.stringify(payload, null, 2), 'utf8');
  if (process.platform !== 'win32') await chmod(file, 0o600);
  return file;
}

let inFlight = null;

function isExpired(t) {
  if (!t?.expiresAt) return true;
  return Date.now() + LEAD_MS >= t.expiresAt; // CHANGED (2): seed: Date.now() + 60_000
}

async function refreshTokens(current, clientId = CLIENT_ID) {
  if (!current.refreshToken) throw new Error('No refresh_token available.');
  const res = await fetch(TOKEN_URL, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ grant_type: 'refresh_token', refresh_token: current.refreshToken, client_id: clientId }),
  });
  if (!res.ok) throw new Error(`Refresh failed: HTTP ${res.status}`);
  const json = await res.json();
  return {
    accessToken: json.access_token,
    refreshToken: json.refresh_token || current.refreshToken,
    expiresAt: Date.now() + Number(json.expires_in ?? 3600) * 1000,
  };
}

export async function ensureFresh(tokens) {
  if (!isExpired(tokens)) return tokens;
  if (!inFlight) inFlight = (async () => refreshTokens(tokens))().finally(() => (inFlight = null));
  const next = await inFlight;
  await saveClaudeCredentials(next);
  return next;
}

// CHANGED (3): the entry point. The seed's "Compatibility" section names the file; it reads
// nothing back, so the reader is the plainest one. An error rejects the top-level await and
// Node exits 1, which the benchmark's timer checks.
const file = join(homedir(), '.claude', '.credentials.json');
const doc = JSON.parse(await readFile(file, 'utf8'));
await ensureFresh(doc.claudeAiOauth);
