// Drives Debian's chromium through OHIF as a person would: the study list, then one study.
// tests/e2e/test_viewer.py runs it and checks what it reports; it asserts nothing itself.
//
//   node tests/browser/viewer.mjs '<json>'   with url, patient, absent, seriesUid, frames, out, chromium
//
// Writes <out>/study-list.png, <out>/study.png and prints one JSON report on stdout.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const job = JSON.parse(process.argv[2]);
const timeout = job.timeoutMs ?? 120_000;
mkdirSync(job.out, { recursive: true });

const report = {
  url: job.url,
  timings: {},
  frames: {},
  failedRequests: [],
  cancelledByPage: [],
  consoleErrors: [],
  canvas: null,
  steps: [],
  // What the browser sent as Origin to DICOMweb, and what came back as Access-Control-Allow-Origin.
  dicomwebOrigins: {},
  // Every finished request, in ms from the first navigation: where the time went.
  timeline: [],
  harnessErrors: [],
  allowedOrigins: {},
};
const step = (name) => report.steps.push(name);

// Software WebGL: a headless machine has no GPU, and OHIF renders with WebGL where it can.
const browser = await chromium.launch({
  executablePath: job.chromium,
  headless: true,
  args: ['--no-sandbox', '--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist'],
});
try {
  const page = await browser.newPage({ viewport: { width: 1440, height: 900 } });
  let start = Date.now();
  let opened = null;
  let inFlight = 0;
  let framesDone = null;
  let resolveFrames;
  const allFrames = new Promise((resolve) => (resolveFrames = resolve));
  const framePattern = new RegExp(`/series/${job.seriesUid.replaceAll('.', '\\.')}/instances/([0-9.]+)/frames/`);

  page.on('console', (message) => {
    if (message.type() === 'error') report.consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => report.consoleErrors.push(`uncaught: ${error.message}`));
  page.on('request', () => inFlight++);
  page.on('requestfailed', (request) => {
    inFlight--;
    const error = request.failure()?.errorText ?? 'failed';
    // net::ERR_ABORTED is the page cancelling its own fetch (OHIF drops a pending thumbnail when
    // a study opens). A server that breaks an answer off shows as another error
    // (ERR_INCOMPLETE_CHUNKED_ENCODING, ERR_CONTENT_LENGTH_MISMATCH, ERR_EMPTY_RESPONSE, ...).
    const into = error === 'net::ERR_ABORTED' ? report.cancelledByPage : report.failedRequests;
    into.push({ url: request.url(), error });
  });
  page.on('requestfinished', async (request) => {
    inFlight--;
    const timing = request.timing();
    report.timeline.push({
      url: request.url(),
      startMs: Math.round(timing.startTime - start),
      endMs: Math.round(timing.startTime + timing.responseEnd - start),
    });
    if (!request.url().includes('/dicomweb/')) return;
    try {
      const sent = (await request.allHeaders()).origin ?? '(none)';
      report.dicomwebOrigins[sent] = (report.dicomwebOrigins[sent] ?? 0) + 1;
      const response = await request.response();
      const allowed = (response && (await response.headerValue('access-control-allow-origin'))) ?? '(none)';
      report.allowedOrigins[allowed] = (report.allowedOrigins[allowed] ?? 0) + 1;
    } catch (error) {
      report.harnessErrors.push(`reading ${request.url()}: ${error}`);
    }
  });
  page.on('response', (response) => {
    const status = response.status();
    if (status >= 400) report.failedRequests.push({ url: response.url(), status });
    const frame = framePattern.exec(response.url());
    if (frame) {
      report.frames[frame[1]] = status;
      if (status === 200 && Object.keys(report.frames).length === job.frames && framesDone === null) {
        framesDone = Date.now();
        resolveFrames();
      }
    }
  });

  start = Date.now();
  await page.goto(job.url, { waitUntil: 'commit', timeout });
  step('loaded');
  await page.getByText(job.patient).first().waitFor({ state: 'visible', timeout });
  report.timings.studyListMs = Date.now() - start;
  step('study list shows the patient');
  // Patients of other tenants must not be listed.
  report.othersListed = [];
  for (const other of job.absent ?? []) {
    if ((await page.getByText(other).count()) > 0) report.othersListed.push(other);
  }
  await dismiss(page, /confirm and hide/i);
  await page.screenshot({ path: join(job.out, 'study-list.png') });

  // A click on the row unfolds it; the mode's button opens the study in the viewer.
  await page.getByText(job.patient).first().click();
  const open = page.getByRole('button', { name: /basic viewer/i }).first();
  await open.waitFor({ state: 'visible', timeout });
  opened = Date.now();
  await open.click();
  step('study opened');

  // The image is on screen when the viewport's canvas holds more than one colour.
  const canvas = await page.waitForFunction(
    () => {
      for (const element of document.querySelectorAll('canvas.cornerstone-canvas')) {
        if (!element.width || !element.height) continue;
        const { data } = element.getContext('2d').getImageData(0, 0, element.width, element.height);
        const seen = new Set();
        let lit = 0;
        for (let i = 0; i < data.length; i += 4 * 7) {
          const value = (data[i] << 16) | (data[i + 1] << 8) | data[i + 2];
          seen.add(value);
          if (value !== 0) lit++;
        }
        if (seen.size > 2 && lit > 100) {
          return { width: element.width, height: element.height, colours: seen.size, litSamples: lit };
        }
      }
      return null;
    },
    null,
    { timeout, polling: 50 },
  );
  report.canvas = await canvas.jsonValue();
  report.timings.firstImageMs = Date.now() - opened;
  step('first image drawn');

  await Promise.race([allFrames, page.waitForTimeout(timeout)]);
  if (framesDone !== null) {
    report.timings.allFramesMs = framesDone - opened;
    step('every frame fetched');
  }
  await dismiss(page, /skip all/i);
  // Late requests (thumbnails, the prefetcher's tail) finish before the picture is taken and
  // before the next navigation, which would cancel them. OHIF opens a study without a page load,
  // so Playwright's own "networkidle" has long been reached: count requests instead.
  await quiet(() => inFlight);
  await page.screenshot({ path: join(job.out, 'study.png') });

  // Back to the study list, as the next visit: OHIF's hashed files come from the browser's cache.
  const again = Date.now();
  await page.goto(job.url, { waitUntil: 'commit', timeout });
  await page.getByText(job.patient).first().waitFor({ state: 'visible', timeout });
  report.timings.studyListAgainMs = Date.now() - again;
  step('study list shown again');
  await quiet(() => inFlight);
  // Listeners still reading headers finish before the browser goes.
  await page.removeAllListeners('requestfinished', { behavior: 'wait' });
} catch (error) {
  report.error = String(error.stack ?? error);
} finally {
  await browser.close();
}
process.stdout.write(JSON.stringify(report) + '\n');

// Resolves once no request has been in flight for half a second (or after 30 s, noted).
async function quiet(inFlight) {
  const deadline = Date.now() + 30_000;
  let since = Date.now();
  while (Date.now() < deadline) {
    if (inFlight() > 0) since = Date.now();
    else if (Date.now() - since >= 500) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  step('network never quiet');
}

// OHIF's notices (investigational use, the first-visit tour) are dismissed as a person would.
async function dismiss(page, name) {
  const button = page.getByRole('button', { name }).first();
  if (await button.isVisible().catch(() => false)) {
    await button.click();
    step(`dismissed ${name.source}`);
  }
}
