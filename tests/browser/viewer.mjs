// Drives Debian's chromium through OHIF as a person would: the study list, then one study, then
// (with `upload`) a file sent through the study list's upload dialog.
// tests/e2e/test_viewer.py runs it and checks what it reports; it asserts nothing itself.
//
//   node tests/browser/viewer.mjs '<json>'   with url, patient, absent, seriesUid, frames, out, chromium
//                                            and optionally upload: {file, patient} and
//                                            ignoreHTTPSErrors (a self-signed certificate)
//
// Writes <out>/study-list.png, <out>/study.png (and <out>/upload.png) and prints one JSON report on
// stdout.
import { join } from 'node:path';
import { dismiss, drawn, framePattern, openStudy, quiet, readJob, run } from './ohif.mjs';

const job = readJob();
const timeout = job.timeoutMs ?? 120_000;

const report = {
  url: job.url,
  timings: {},
  frames: {},
  failedRequests: [],
  cancelledByPage: [],
  consoleErrors: [],
  canvas: null,
  steps: [],
  // What the browser sent as Origin on its DICOMweb reads, and what came back as
  // Access-Control-Allow-Origin (a browser sends Origin on every POST, same origin or not).
  dicomwebOrigins: {},
  // Every finished request, in ms from the first navigation: where the time went.
  timeline: [],
  harnessErrors: [],
  allowedOrigins: {},
  // Requests other than reads (GET, HEAD), with their Origin and Access-Control-Allow-Origin: the
  // upload's STOW-RS. A CORS preflight is the browser's own and never shows here.
  writes: [],
  upload: null,
};
const step = (name) => report.steps.push(name);

await run({ job, report }, async (browser) => {
  const page = await browser.newPage({
    viewport: { width: 1440, height: 900 },
    ignoreHTTPSErrors: job.ignoreHTTPSErrors ?? false,
  });
  let start = Date.now();
  let inFlight = 0;
  let framesDone = null;
  let resolveFrames;
  const allFrames = new Promise((resolve) => (resolveFrames = resolve));
  const frameUrl = framePattern(job.seriesUid);

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
    const method = request.method();
    const read = method === 'GET' || method === 'HEAD';
    if (read && !request.url().includes('/dicomweb/')) return;
    try {
      const sent = (await request.allHeaders()).origin ?? '(none)';
      const response = await request.response();
      const allowed = (response && (await response.headerValue('access-control-allow-origin'))) ?? '(none)';
      if (read) {
        report.dicomwebOrigins[sent] = (report.dicomwebOrigins[sent] ?? 0) + 1;
        report.allowedOrigins[allowed] = (report.allowedOrigins[allowed] ?? 0) + 1;
      } else {
        report.writes.push({ method, url: request.url(), status: response?.status(), origin: sent, allowed });
      }
    } catch (error) {
      report.harnessErrors.push(`reading ${request.url()}: ${error}`);
    }
  });
  page.on('response', (response) => {
    const status = response.status();
    if (status >= 400) report.failedRequests.push({ url: response.url(), status });
    const frame = frameUrl.exec(response.url());
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
  await dismiss(page, /confirm and hide/i, step);
  await page.screenshot({ path: join(job.out, 'study-list.png') });

  const opened = await openStudy(page, job.patient, timeout);
  step('study opened');

  const canvas = await page.waitForFunction(drawn, null, { timeout, polling: 50 });
  report.canvas = await canvas.jsonValue();
  report.timings.firstImageMs = Date.now() - opened;
  step('first image drawn');

  await Promise.race([allFrames, page.waitForTimeout(timeout)]);
  if (framesDone !== null) {
    report.timings.allFramesMs = framesDone - opened;
    step('every frame fetched');
  }
  await dismiss(page, /skip all/i, step);
  // Late requests (thumbnails, the prefetcher's tail) finish before the picture is taken and
  // before the next navigation, which would cancel them. OHIF opens a study without a page load,
  // so Playwright's own "networkidle" has long been reached: count requests instead.
  await quiet(() => inFlight, step);
  await page.screenshot({ path: join(job.out, 'study.png') });

  // Back to the study list, as the next visit: OHIF's hashed files come from the browser's cache.
  const again = Date.now();
  await page.goto(job.url, { waitUntil: 'commit', timeout });
  await page.getByText(job.patient).first().waitFor({ state: 'visible', timeout });
  report.timings.studyListAgainMs = Date.now() - again;
  step('study list shown again');
  await quiet(() => inFlight, step);
  if (job.upload) {
    await upload(page, job.upload, () => inFlight);
    await quiet(() => inFlight, step);
  }
  // Listeners still reading headers finish before the browser goes.
  await page.removeAllListeners('requestfinished', { behavior: 'wait' });
});

// The study list's "Upload" button (OHIF shows it when the data source has dicomUploadEnabled)
// opens the "Upload files" dialog; a file set on its "Add files" input is sent with STOW-RS at once.
async function upload(page, { file, patient }, inFlight) {
  const listed = page.getByText(patient).first();
  report.upload = { listedBefore: (await page.getByText(patient).count()) > 0, reloads: 0 };
  const button = page.getByRole('button', { name: 'Upload', exact: true });
  // The list is on screen already: the button is there at once or not at all.
  await button.waitFor({ state: 'visible', timeout: 10_000 }).catch(() => {
    throw new Error("OHIF's study list has no Upload button: set dicomUploadEnabled in its data source");
  });
  await button.click();
  const dialog = page.getByRole('dialog', { name: 'Upload files' });
  await dialog.waitFor({ state: 'visible', timeout });
  step('upload dialog opened');
  const began = Date.now();
  let posted = false;
  page.on('request', (request) => (posted ||= request.method() === 'POST'));
  const stow = page.waitForResponse((response) => response.request().method() === 'POST', { timeout });
  // Two hidden inputs: "Add files" and "Add folder" (webkitdirectory); the first takes a file.
  await dialog.getByRole('button', { name: 'Add files' }).locator('input[type=file]').setInputFiles(file);
  // The dialog counts a file as completed whether it was stored or not, then says which. A file
  // OHIF itself refuses (not DICOM) completes without any request.
  const outcome = dialog.getByText(/^Completed(!| with \d+ errors?!)$/);
  await outcome.waitFor({ state: 'visible', timeout });
  report.upload.ms = Date.now() - began;
  if (posted) {
    const response = await stow;
    report.upload.post = {
      url: response.url(),
      status: response.status(),
      contentType: (await response.request().headerValue('content-type')) ?? '(none)',
      answerType: (await response.headerValue('content-type')) ?? '(none)',
      answer: await response.text().catch((error) => `(unreadable: ${error})`),
    };
  } else {
    stow.catch(() => {});
    report.upload.post = null;
  }
  report.upload.outcome = await outcome.textContent();
  const summary = dialog.getByText(/^\d+ files? completed\.$/);
  report.upload.summary = await summary.textContent();
  // Each failed file's reason, in the one element OHIF gives no role or test id.
  report.upload.failures = await dialog.locator('.pl-10').allTextContents();
  step('upload completed in the dialog');
  await page.screenshot({ path: join(job.out, 'upload.png') });
  // That "Close" (not the dialog's corner X) also queries the study list again.
  let query = studySearch(page);
  await summary.locator('..').getByRole('button', { name: 'Close', exact: true }).click();
  await dialog.waitFor({ state: 'hidden', timeout });
  // STOW answers once the file is safe; it is indexed a moment later, so the list OHIF read on
  // closing may predate it. A person would reload the list, so the harness does, until a deadline.
  const deadline = Date.now() + 30_000;
  for (;;) {
    await query;
    // The list is drawn from that answer: a short wait for React, not for the server.
    const shown = await listed.waitFor({ state: 'visible', timeout: 5_000 }).then(
      () => true,
      () => false,
    );
    if (shown || Date.now() > deadline) {
      report.upload.listed = shown;
      break;
    }
    await quiet(inFlight, step);
    query = studySearch(page);
    await page.reload({ waitUntil: 'commit', timeout });
    report.upload.reloads++;
  }
  if (report.upload.listed) step('uploaded study listed');
}

// The next answer to the study list's QIDO-RS search (null if none came).
function studySearch(page) {
  return page
    .waitForResponse(
      (response) =>
        response.request().method() === 'GET' && new URL(response.url()).pathname.endsWith('/dicomweb/studies'),
      { timeout },
    )
    .catch(() => null);
}
