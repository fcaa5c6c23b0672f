// The OpenID provider the gateway's tests log in against: the real, certified
// `oidc-provider`, configured to issue tokens shaped like Microsoft Entra ID's
// (tenant GUID in the issuer, tid, oid, GUID groups, app roles, the groups
// overage shape) and to send OIDC Back-Channel Logout.
//
//   node server.mjs CONFIG.json
//
// CONFIG.json: { port, tenant, keys: {private JWK set}, clients: [...],
//                accounts: { login: { password, amr, claims } } }
//
// Around the provider, for the tests only:
//   GET  /common/v2.0/.well-known/openid-configuration
//        Entra's multi-tenant discovery: the same document with the issuer
//        written as https://.../{tenantid}/v2.0.
//   POST /_test/tamper {"mode": "...", ...}
//        The next ID token leaving the token endpoint is altered (an attacker
//        on the token channel, or a misbehaving IdP): "claims" re-signs it with
//        the provider's own key and changed claims; "alg-none", "hs256-pubkey"
//        and "other-key" forge it.
//   Interactions: a plain login form (login, password) and automatic consent.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { createHmac, generateKeyPairSync } from 'node:crypto';
import Provider from 'oidc-provider';
import * as jose from 'jose';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const base = `http://127.0.0.1:${config.port}`;
const mount = `/${config.tenant}/v2.0`;
const issuer = `${base}${mount}`;
let tamper = null;

function findAccount(ctx, id) {
  const account = config.accounts[id];
  if (!account) return undefined;
  return {
    accountId: id,
    async claims() {
      return { sub: id, ...account.claims };
    },
  };
}

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: config.keys,
  findAccount,
  conformIdTokenClaims: false,
  scopes: ['openid', 'offline_access', 'graph.read'],
  claims: {
    openid: ['sub'],
    profile: [
      'name', 'preferred_username', 'oid', 'tid', 'groups', 'roles', 'acrs',
      'hasgroups', '_claim_names', '_claim_sources', 'amr',
    ],
    email: ['email'],
    auth_time: null,
    sid: null,
  },
  cookies: { keys: ['test-cookie-key-not-secret'] },
  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
  },
  pkce: { required: () => true },
  // everything here is on loopback, which the provider's SSRF guard refuses
  // for back-channel logout calls: this test provider talks to 127.0.0.1 only
  fetch: (url, options) => {
    const { dispatcher, ...rest } = options;
    return globalThis.fetch(url, rest);
  },
  interactions: {
    url(ctx, interaction) {
      return `${mount}/interaction/${interaction.uid}`;
    },
  },
  loadExistingGrant: async (ctx) => {
    // consent is implied for every client of this test provider
    const grantId = ctx.oidc.result?.consent?.grantId
      || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (grantId) return ctx.oidc.provider.Grant.find(grantId);
    const grant = new ctx.oidc.provider.Grant({
      clientId: ctx.oidc.client.clientId,
      accountId: ctx.oidc.session.accountId,
    });
    grant.addOIDCScope('openid profile email');
    grant.addOIDCClaims(['amr', 'auth_time', 'sid']);
    await grant.save();
    return grant;
  },
  ttl: { Session: 3600, Interaction: 600, Grant: 3600, AccessToken: 600, IdToken: 600,
    AuthorizationCode: 60, ClientCredentials: 600 },
  renderError(ctx, out) {
    ctx.type = 'text/plain';
    ctx.body = `error: ${out.error}: ${out.error_description || ''}`;
  },
});
provider.proxy = false;
provider.on('backchannel.error', (ctx, err, client) => {
  console.log(`backchannel logout to ${client.clientId} failed: ${err.message} ${err.cause ? err.cause.message || err.cause.code : ""}`);
});
provider.on('backchannel.success', (ctx, client) => {
  console.log(`backchannel logout to ${client.clientId} sent`);
});

const callback = provider.callback();

function loginForm(uid, error) {
  return `<!doctype html><html><body><h1>Test IdP sign-in</h1>
${error ? `<p id="error">${error}</p>` : ''}
<form method="post" action="${mount}/interaction/${uid}/login">
<input name="login" autofocus><input name="password" type="password">
<button type="submit">Sign in</button></form></body></html>`;
}

async function readBody(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

async function interaction(req, res, uid, action) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw new Error('interaction mismatch');
  if (action === 'login' && req.method === 'POST') {
    const form = new URLSearchParams(await readBody(req));
    const login = form.get('login') || '';
    const account = config.accounts[login];
    if (!account || account.password !== form.get('password')) {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(loginForm(uid, 'wrong user name or password'));
      return;
    }
    await provider.interactionFinished(req, res, {
      login: { accountId: login, amr: account.amr || ['pwd'], acr: account.acr },
    }, { mergeWithLastSubmission: false });
    return;
  }
  res.writeHead(200, { 'content-type': 'text/html' });
  res.end(loginForm(uid, ''));
}

async function tamperIdToken(token) {
  const mode = tamper;
  tamper = null;
  const payload = jose.decodeJwt(token);
  const header = jose.decodeProtectedHeader(token);
  const signing = await jose.importJWK(config.keys.keys[0], 'RS256');
  const claims = { ...payload, ...(mode.claims || {}) };
  for (const name of mode.remove || []) delete claims[name];
  if (mode.mode === 'claims') {
    return new jose.SignJWT(claims).setProtectedHeader({ alg: header.alg, kid: header.kid })
      .sign(signing);
  }
  if (mode.mode === 'alg-none') {
    const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    return `${enc({ alg: 'none', typ: 'JWT' })}.${enc(claims)}.`;
  }
  if (mode.mode === 'hs256-pubkey') {
    // the classic key-confusion forgery: HMAC keyed with the provider's public key
    const publicJwk = { ...config.keys.keys[0] };
    for (const k of ['d', 'p', 'q', 'dp', 'dq', 'qi']) delete publicJwk[k];
    const pem = (await jose.importJWK(publicJwk, 'RS256', { extractable: true }));
    const spki = await jose.exportSPKI(pem);
    const enc = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const head = enc({ alg: 'HS256', kid: header.kid, typ: 'JWT' });
    const body = enc(claims);
    const sig = createHmac('sha256', spki).update(`${head}.${body}`).digest('base64url');
    return `${head}.${body}.${sig}`;
  }
  if (mode.mode === 'other-key') {
    const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    return new jose.SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: header.kid })
      .sign(privateKey);
  }
  throw new Error(`unknown tamper mode ${mode.mode}`);
}

function interceptToken(res) {
  // collect the provider's token response and rewrite its id_token
  const chunks = [];
  const { write, end, setHeader, writeHead } = res;
  res.setHeader = function (name, value) {
    if (String(name).toLowerCase() === 'content-length') return this;
    return setHeader.call(this, name, value);
  };
  res.writeHead = function (status, ...rest) {
    this.statusCode = status;
    if (rest.length && typeof rest[rest.length - 1] === 'object') {
      for (const [k, v] of Object.entries(rest[rest.length - 1])) this.setHeader(k, v);
    }
    return this;
  };
  res.write = function (chunk) { chunks.push(Buffer.from(chunk)); return true; };
  res.end = function (chunk) {
    if (chunk) chunks.push(Buffer.from(chunk));
    const text = Buffer.concat(chunks).toString('utf8');
    (async () => {
      let out = text;
      try {
        const body = JSON.parse(text);
        if (body.id_token) {
          body.id_token = await tamperIdToken(body.id_token);
          out = JSON.stringify(body);
        }
      } catch (err) {
        console.error('tamper failed', err);
      }
      res.write = write; res.end = end; res.writeHead = writeHead;
      setHeader.call(res, 'content-length', Buffer.byteLength(out));
      end.call(res, out);
    })();
    return this;
  };
}

const server = createServer(async (req, res) => {
  try {
    const url = new URL(req.url, base);
    if (url.pathname === '/common/v2.0/.well-known/openid-configuration') {
      const r = await fetch(`${issuer}/.well-known/openid-configuration`);
      const doc = await r.json();
      doc.issuer = `${base}/{tenantid}/v2.0`;
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(doc));
      return;
    }
    if (url.pathname === '/_test/tamper' && req.method === 'POST') {
      tamper = JSON.parse(await readBody(req));
      res.writeHead(204);
      res.end();
      return;
    }
    const m = url.pathname.match(/^\/[^/]+\/v2\.0\/interaction\/([^/]+)(?:\/(login))?$/);
    if (m && url.pathname.startsWith(mount)) {
      await interaction(req, res, m[1], m[2]);
      return;
    }
    if (tamper && req.method === 'POST' && url.pathname === `${mount}/token`) {
      interceptToken(res);
    }
    if (!url.pathname.startsWith(`${mount}/`)) {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end('not found');
      return;
    }
    // the provider is mounted under the tenant path, as Entra's endpoints are
    req.originalUrl = req.url;
    req.url = req.url.slice(mount.length);
    callback(req, res);
  } catch (err) {
    console.error(err);
    if (!res.headersSent) res.writeHead(500, { 'content-type': 'text/plain' });
    res.end(`test provider error: ${err.message}`);
  }
});

server.listen(config.port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
