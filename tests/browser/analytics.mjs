// Opens pacsflow's /analytics page in Debian's chromium and reports what it shows: each report's
// card, the data of its chart as Chart.js holds it, whether the canvas has a picture on it, and
// the text of its table. tests/e2e/test_analytics_page.py runs it and checks the report; this
// script asserts nothing itself.
//
//   node tests/browser/analytics.mjs '<json>'   with url, chromium, out, and optionally screenshot
//                                               (a path: the README's picture) and timeoutMs
//
// Writes <out>/analytics.png (and the screenshot) and prints one JSON report on stdout.
import { copyFileSync, mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { readJob, run } from './ohif.mjs';

const job = readJob();
const timeout = job.timeoutMs ?? 60_000;

const report = { url: job.url, consoleErrors: [], failedRequests: [], steps: [], charts: null, cards: [] };
const step = (name) => report.steps.push(name);

// The page draws its charts on 2D canvases: no WebGL to fake.
await run({ job, report, webgl: false }, async (browser) => {
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  page.on('console', (message) => {
    if (message.type() === 'error') report.consoleErrors.push(message.text());
  });
  page.on('pageerror', (error) => report.consoleErrors.push(`uncaught: ${error.message}`));
  page.on('requestfailed', (request) =>
    report.failedRequests.push({ url: request.url(), error: request.failure()?.errorText ?? 'failed' }),
  );
  page.on('response', (response) => {
    if (response.status() >= 400) report.failedRequests.push({ url: response.url(), status: response.status() });
  });

  await page.goto(job.url, { waitUntil: 'load', timeout });
  step('loaded');
  // The page marks its body ready once every report's card is drawn or has failed.
  await page.waitForSelector('body[data-state="ready"]', { timeout });
  step('every report shown');
  report.scope = await page.locator('#scope').textContent();
  report.notice = (await page.locator('#notice').isVisible()) ? await page.locator('#notice').textContent() : null;
  report.charts = await page.evaluate(() => typeof window.Chart === 'function');
  report.cards = await page.evaluate(() =>
    [...document.querySelectorAll('section.card')].map((card) => {
      const canvas = card.querySelector('canvas');
      const chart = canvas && window.Chart ? window.Chart.getChart(canvas) : null;
      // Pixels of the plot area in a colour of the chart's series: its bars, lines and points;
      // not the axes, grid and labels (grey) an empty chart has too, nor the legend's swatches.
      const colours = (chart?.data.datasets ?? []).map((set) =>
        [1, 3, 5].map((at) => parseInt(String(set.borderColor).slice(at, at + 2), 16)),
      );
      let painted = 0;
      let dataPixels = 0;
      if (canvas && canvas.width && canvas.height) {
        const { data } = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height);
        const scale = chart?.currentDevicePixelRatio ?? 1;
        const area = chart?.chartArea;
        for (let i = 0; i < data.length; i += 4) {
          if (data[i + 3] === 0) continue;
          painted++;
          if (!area || data[i + 3] !== 255) continue;
          const x = ((i / 4) % canvas.width) / scale;
          const y = Math.floor(i / 4 / canvas.width) / scale;
          if (x < area.left || x > area.right || y < area.top || y > area.bottom) continue;
          if (colours.some((colour) => colour.every((value, c) => Math.abs(value - data[i + c]) <= 8))) dataPixels++;
        }
      }
      return {
        name: card.dataset.report,
        state: card.dataset.state,
        title: card.querySelector('h2')?.textContent,
        status: card.querySelector('.status')?.textContent,
        chart: chart && {
          type: chart.config.type,
          labels: chart.data.labels,
          datasets: chart.data.datasets.map((set) => ({ label: set.label, data: set.data })),
        },
        canvas: canvas && { width: canvas.width, height: canvas.height, painted, dataPixels },
        columns: [...card.querySelectorAll('thead th')].map((cell) => cell.textContent),
        rows: [...card.querySelectorAll('tbody tr')].map((row) => [...row.cells].map((cell) => cell.textContent)),
      };
    }),
  );
  await page.screenshot({ path: join(job.out, 'analytics.png') });
  if (job.screenshot) {
    mkdirSync(dirname(job.screenshot), { recursive: true });
    copyFileSync(join(job.out, 'analytics.png'), job.screenshot);
    step('screenshot saved');
  }
});
