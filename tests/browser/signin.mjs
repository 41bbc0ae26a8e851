// Drives Debian's chromium through the viewer's sign-in, as a person would, with pacsflow's
// DICOMweb behind bearer tokens (PACSFLOW_AUTH=jwt): OHIF sends the browser to the issuer's login
// form, the person signs in, OHIF lists and opens a study with the token on every DICOMweb request,
// and the person signs out. Then a second browser, never signed in, is sent to the login form too
// and gets nothing from DICOMweb. tests/e2e/test_viewer_signin.py runs it and checks what it
// reports; it asserts nothing itself.
//
//   node tests/browser/signin.mjs '<json>'   with url, issuer, username, password, patient, seriesUid,
//                                            frames, probes (DICOMweb paths), canary (a URL the
//                                            page may not fetch), out, chromium
//                                            and optionally tenant: {url, patient}
//
// Writes <out>/login.png, <out>/study-list.png, <out>/study.png and prints one JSON report on stdout.
import { join } from 'node:path';
import { dismiss, drawn, framePattern, openStudy, quiet, readJob, run } from './ohif.mjs';

const job = readJob();
const timeout = job.timeoutMs ?? 60_000;

const report = { timings: {}, steps: [], signedIn: null, tenant: null, anonymous: null };
const step = (name) => report.steps.push(name);

await run({ job, report }, async (browser) => {
  report.signedIn = await signedIn(browser, job.url, job.patient, true);
  if (job.tenant) report.tenant = await signedIn(browser, job.tenant.url, job.tenant.patient, false);
  report.anonymous = await anonymous(browser);
});

// A browser of its own (no cookies, no storage) that watches what a page does.
async function watched(browser) {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 } });
  const page = await context.newPage();
  const seen = {
    consoleErrors: [],
    // Violations of the page's Content-Security-Policy, as the page's own event reports them;
    // chromium also logs each as a console error "Refused to ...".
    cspViolations: [],
    failedRequests: [],
    // Answers of 400 or more, from pacsflow or the issuer.
    refused: [],
    // Every DICOMweb request: whether it carried a bearer token, and the answer's status.
    dicomweb: [],
    // Where the browser went: each navigation of the top frame.
    navigations: [],
    harnessErrors: [],
  };
  let inFlight = 0;
  await page.exposeFunction('__pacsflowViolation', (v) => seen.cspViolations.push(v));
  await page.addInitScript(() => {
    document.addEventListener('securitypolicyviolation', (e) =>
      window.__pacsflowViolation(`${e.violatedDirective} blocked ${e.blockedURI} (${e.sourceFile}:${e.lineNumber})`),
    );
  });
  page.on('console', (message) => {
    // For a resource that failed to load, the location is the resource's address.
    if (message.type() === 'error') seen.consoleErrors.push({ text: message.text(), url: message.location().url });
  });
  page.on('pageerror', (error) => seen.consoleErrors.push({ text: `uncaught: ${error.message}`, url: page.url() }));
  page.on('framenavigated', (frame) => {
    if (frame === page.mainFrame()) seen.navigations.push(frame.url());
  });
  page.on('response', (response) => {
    if (response.status() >= 400) seen.refused.push({ url: response.url(), status: response.status() });
  });
  page.on('request', () => inFlight++);
  page.on('requestfailed', (request) => {
    inFlight--;
    const error = request.failure()?.errorText ?? 'failed';
    // The page cancelling its own fetch (a thumbnail when a study opens, or everything when OHIF
    // leaves for the login form) is not a failure of the server.
    if (error !== 'net::ERR_ABORTED') seen.failedRequests.push({ url: request.url(), error });
  });
  page.on('requestfinished', async (request) => {
    inFlight--;
    if (!new URL(request.url()).pathname.includes('/dicomweb/')) return;
    try {
      const authorization = (await request.allHeaders()).authorization ?? null;
      const response = await request.response();
      seen.dicomweb.push({
        method: request.method(),
        url: request.url(),
        status: response?.status() ?? null,
        // The scheme and the token's form, never the token itself.
        authorization: authorization && authorization.replace(/^(Bearer) [\w-]+\.[\w-]+\.[\w-]+$/, '$1 <jwt>'),
      });
    } catch (error) {
      seen.harnessErrors.push(`reading ${request.url()}: ${error}`);
    }
  });
  return { context, page, seen, inFlight: () => inFlight };
}

// Opens the viewer, signs in at the issuer's form, lists the study and (with `open`) views it.
async function signedIn(browser, url, patient, open) {
  const name = open ? 'signedIn' : 'tenant';
  const { context, page, seen, inFlight } = await watched(browser);
  const result = { seen, timings: {} };
  try {
    const start = Date.now();
    await page.goto(url, { waitUntil: 'commit', timeout });
    const form = await loginForm(page);
    result.authorize = form.authorize;
    result.timings.loginFormMs = Date.now() - start;
    step(`${name}: login form`);
    if (open) await page.screenshot({ path: join(job.out, 'login.png') });
    const signing = Date.now();
    await page.getByLabel('Username').fill(job.username);
    await page.getByLabel('Password').fill(job.password);
    await page.getByRole('button', { name: 'Sign in' }).click();
    await page.getByText(patient).first().waitFor({ state: 'visible', timeout });
    result.timings.studyListMs = Date.now() - signing;
    result.landedOn = page.url();
    step(`${name}: study list shows the patient`);
    await dismiss(page, /confirm and hide/i, step);
    if (!open) return result;
    await page.screenshot({ path: join(job.out, 'study-list.png') });

    const frameUrl = framePattern(job.seriesUid);
    const frames = {};
    const frameSyntaxes = new Set();
    const reading = [];
    let resolveFrames;
    const allFrames = new Promise((resolve) => (resolveFrames = resolve));
    page.on('response', (response) => {
      const frame = frameUrl.exec(response.url());
      if (!frame) return;
      frames[frame[1]] = response.status();
      // The transfer syntax is in the part's own headers, at the start of the body.
      reading.push(
        response.body().then(
          (body) => {
            const part = body.subarray(0, 512).toString('latin1');
            frameSyntaxes.add(/transfer-syntax=([0-9.]+)/i.exec(part)?.[1] ?? '(none)');
          },
          (error) => seen.harnessErrors.push(`reading ${response.url()}: ${error}`),
        ),
      );
      if (Object.values(frames).filter((s) => s === 200).length === job.frames) resolveFrames();
    });
    const opened = await openStudy(page, patient, timeout);
    step('signedIn: study opened');
    result.canvas = await (await page.waitForFunction(drawn, null, { timeout, polling: 50 })).jsonValue();
    result.timings.firstImageMs = Date.now() - opened;
    step('signedIn: first image drawn');
    let timer;
    await Promise.race([allFrames, new Promise((resolve) => (timer = setTimeout(resolve, timeout)))]);
    clearTimeout(timer);
    await Promise.all(reading);
    result.frames = frames;
    result.frameSyntaxes = [...frameSyntaxes];
    result.timings.allFramesMs = Date.now() - opened;
    await dismiss(page, /skip all/i, step);
    await quiet(inFlight, step);
    await page.screenshot({ path: join(job.out, 'study.png') });

    // Signing out (OHIF's /logout route, where its menu's "Logout" goes) ends the session at the
    // issuer, which sends the browser back to the viewer; with no user now, OHIF asks for a sign-in.
    const issuer = new URL(job.issuer).origin;
    const endSession = page.waitForRequest(
      (request) => request.isNavigationRequest() && request.url().startsWith(`${issuer}/logout`),
      { timeout },
    );
    const out = Date.now();
    await page.goto(new URL('logout', url).href, { waitUntil: 'commit', timeout });
    const ended = new URL((await endSession).url());
    const query = Object.fromEntries(ended.searchParams);
    if (query.id_token_hint) query.id_token_hint = query.id_token_hint.replace(/^[\w-]+\.[\w-]+\.[\w-]+$/, '<jwt>');
    result.signOut = { path: ended.pathname, query };
    result.signOut.authorize = (await loginForm(page)).authorize;
    result.timings.signOutMs = Date.now() - out;
    step('signedIn: signed out, asked to sign in again');
    return result;
  } finally {
    // Listeners still reading headers finish before the browser goes.
    await page.removeAllListeners('requestfinished', { behavior: 'wait' });
    await context.close();
  }
}

// A browser that never signs in: OHIF sends it to the login form, and DICOMweb, asked from the
// viewer's own origin without a token, answers nothing but 401.
async function anonymous(browser) {
  const { context, page, seen } = await watched(browser);
  const result = { seen, probes: [] };
  try {
    await page.goto(job.url, { waitUntil: 'commit', timeout });
    result.authorize = (await loginForm(page)).authorize;
    step('anonymous: login form');
    // Back on the viewer's origin without starting OHIF (its configuration script is no page):
    // the fetches below are the page's own, with its cookies, if it had any.
    await page.goto(new URL('/app-config.js', job.url).href, { waitUntil: 'load', timeout });
    result.probes = await page.evaluate(async (paths) => {
      const answers = [];
      for (const path of paths) {
        const response = await fetch(path, { headers: { Accept: 'application/dicom+json, multipart/related; type="application/octet-stream"' } });
        // Read to the end: the request is finished, and reported, before the probes are.
        const body = await response.text();
        answers.push({ path, status: response.status, challenge: response.headers.get('www-authenticate'), body });
      }
      return answers;
    }, job.probes);
    step('anonymous: DICOMweb probed');
    // The page's policy is enforced, and a violation is seen: a fetch to an origin it does not name.
    result.canary = await page.evaluate(async (url) => {
      const reported = new Promise((resolve) =>
        document.addEventListener('securitypolicyviolation', (e) => resolve(e.effectiveDirective), { once: true }),
      );
      const outcome = await fetch(url).then(
        () => 'fetched',
        () => 'refused',
      );
      return { url, outcome, directive: await reported };
    }, job.canary);
    await page.removeAllListeners('requestfinished', { behavior: 'wait' });
    return result;
  } finally {
    await context.close();
  }
}

// Waits for the issuer's login form; returns the authorization request that led there.
async function loginForm(page) {
  const issuer = new URL(job.issuer).origin;
  await page.waitForURL((url) => url.origin === issuer, { timeout });
  await page.getByRole('button', { name: 'Sign in' }).waitFor({ state: 'visible', timeout });
  const address = new URL(page.url());
  return { authorize: { path: address.pathname, query: Object.fromEntries(address.searchParams) } };
}
