// A real OpenID Provider for the tests: panva's oidc-provider (certified), on loopback, plain http.
//
// Run as `node oidc_provider.mjs CONFIG.json` from a folder holding node_modules/oidc-provider (ESM resolves
// packages beside the script, so tests/servers/oidc_provider.py copies this file there).
// CONFIG: {port, clients: [...], users: {name: {password, groups, email, name}}, jwks: {keys: [private JWKs]}}.
// The first key of `jwks` signs: a rotation is a restart with a new key first.
//
// Control endpoints for the tests (loopback only, like the whole server):
//   POST /control/user    {"user": "alice", "groups": [...]}  set a user's groups; {"user": .., "remove": true}
//   POST /control/tamper  {"mode": "signature" | "aud" | null}  spoil the next token response's ID token
import { readFileSync } from 'node:fs';
import http from 'node:http';
import * as jose from 'jose';
import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${config.port}`;
const users = new Map(Object.entries(config.users));
let tamper = null;

function claimsOf(id) {
  const user = users.get(id);
  return user && {
    sub: id, preferred_username: id, name: user.name || id, email: user.email || `${id}@example.test`,
    email_verified: true, groups: user.groups || [],
  };
}

const provider = new Provider(issuer, {
  clients: config.clients,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true }, rpInitiatedLogout: { enabled: true } },
  claims: {
    openid: ['sub'], profile: ['preferred_username', 'name'], email: ['email', 'email_verified'],
    groups: ['groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email', 'groups'],
  conformIdTokenClaims: false,
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  jwks: config.jwks,
  cookies: { keys: ['authportal-test-op-cookie-key'] },
  ttl: { AccessToken: 3600, IdToken: 3600, RefreshToken: 86400 },
  findAccount: async (ctx, id) => (users.has(id) ? { accountId: id, claims: async () => claimsOf(id) } : undefined),
});

async function body(ctx) {
  let text = '';
  for await (const chunk of ctx.req) text += chunk;
  return JSON.parse(text || '{}');
}

async function spoiled(idToken, mode) {
  if (mode === 'signature') {
    const [header, payload, signature] = idToken.split('.');
    const flipped = signature[0] === 'A' ? `B${signature.slice(1)}` : `A${signature.slice(1)}`;
    return [header, payload, flipped].join('.');
  }
  // mode "aud": a genuine signature by the provider's own key, for another client
  const claims = jose.decodeJwt(idToken);
  const jwk = config.jwks.keys[0];
  const key = await jose.importJWK(jwk, 'RS256');
  return new jose.SignJWT({ ...claims, aud: 'someone-else', azp: 'someone-else' })
    .setProtectedHeader({ alg: 'RS256', kid: jwk.kid, typ: 'JWT' }).sign(key);
}

provider.use(async (ctx, next) => {
  if (ctx.path === '/control/user' && ctx.method === 'POST') {
    const { user, groups, remove } = await body(ctx);
    if (remove) users.delete(user); else users.set(user, { ...(users.get(user) || {}), groups });
    ctx.body = { ok: true };
    return;
  }
  if (ctx.path === '/control/tamper' && ctx.method === 'POST') {
    tamper = (await body(ctx)).mode || null;
    ctx.body = { ok: true };
    return;
  }
  await next();
  if (ctx.path === '/token' && tamper && ctx.status === 200 && ctx.body && ctx.body.id_token) {
    ctx.body = { ...ctx.body, id_token: await spoiled(ctx.body.id_token, tamper) };
    tamper = null;
  }
});

http.createServer(provider.callback()).listen(config.port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${issuer}`);
});
