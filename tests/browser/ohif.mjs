// What the browser scripts (viewer.mjs, signin.mjs, analytics.mjs) share: reading their job,
// running chromium around their work and printing their report, and the ways a person uses OHIF.
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';

// Software WebGL: a headless machine has no GPU, and OHIF renders with WebGL where it can.
const WEBGL = ['--use-angle=swiftshader', '--enable-unsafe-swiftshader', '--ignore-gpu-blocklist'];

// The job, the script's one argument (JSON), with its results folder made.
export function readJob() {
  const job = JSON.parse(process.argv[2]);
  mkdirSync(job.out, { recursive: true });
  return job;
}

// Launches job.chromium (with software WebGL unless `webgl` is false), hands it to `drive`, and
// prints the report as one JSON line on stdout, with what `drive` threw (if anything) as its
// `error`: the test reads the report, whatever happened.
export async function run({ job, report, webgl = true }, drive) {
  const browser = await chromium.launch({
    executablePath: job.chromium,
    headless: true,
    args: ['--no-sandbox', ...(webgl ? WEBGL : [])],
  });
  try {
    await drive(browser);
  } catch (error) {
    report.error = String(error.stack ?? error);
  } finally {
    await browser.close();
  }
  process.stdout.write(JSON.stringify(report) + '\n');
}

// Matches a frame request of the series, capturing the instance's UID.
export function framePattern(seriesUid) {
  return new RegExp(`/series/${seriesUid.replaceAll('.', '\\.')}/instances/([0-9.]+)/frames/`);
}

// A click on the study list's row unfolds it; the mode's button opens the study in the viewer.
// Returns when it was clicked.
export async function openStudy(page, patient, timeout) {
  await page.getByText(patient).first().click();
  const button = page.getByRole('button', { name: /basic viewer/i }).first();
  await button.waitFor({ state: 'visible', timeout });
  const opened = Date.now();
  await button.click();
  return opened;
}

// The image is on screen when the viewport's canvas holds more than a couple of colours. It runs in
// the page (page.waitForFunction), so it uses nothing from this module.
export function drawn() {
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
}

// Resolves once no request has been in flight for half a second (or after 30 s, noted by `step`).
export async function quiet(inFlight, step) {
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
export async function dismiss(page, name, step) {
  const button = page.getByRole('button', { name }).first();
  if (await button.isVisible().catch(() => false)) {
    await button.click();
    step(`dismissed ${name.source}`);
  }
}
