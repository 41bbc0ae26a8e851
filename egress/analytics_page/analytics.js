// The /analytics page: one card per report listed at `analytics/reports`, each with its chart
// (Chart.js, when `make install` put it there) and its table, from `analytics/reports/<name>`.
// Addresses are relative: the same page serves /analytics and /tenants/<t>/analytics.
// Every value reaches the page through textContent or Chart.js's canvas, never parsed as HTML.
'use strict';

const PALETTE = ['#2f6fb5', '#d0792b', '#3a9a5b', '#b5435a', '#7a5bb5', '#6b7b8c'];
const NUMBERS = new Intl.NumberFormat('en', { maximumFractionDigits: 2 });
const charts = [];

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

async function getJson(url) {
  const response = await fetch(url, { headers: { Accept: 'application/json' }, cache: 'no-cache' });
  const body = await response.json().catch(() => null);
  if (!response.ok) throw new Error(body?.error ?? `${url}: HTTP ${response.status}`);
  return body;
}

// A report's y is one column or several.
function names(value) {
  if (value === null || value === undefined) return [];
  return Array.isArray(value) ? value : [value];
}

function format(value) {
  if (value === null || value === undefined) return '';
  if (typeof value === 'number') return NUMBERS.format(value);
  return String(value);
}

function table(result) {
  const wrapper = element('div', 'rows');
  const grid = element('table');
  const head = grid.createTHead().insertRow();
  const numeric = result.columns.map((_, index) => result.rows.some((row) => typeof row[index] === 'number'));
  result.columns.forEach((column, index) => head.appendChild(element('th', numeric[index] ? 'number' : '', column)));
  const body = grid.createTBody();
  for (const row of result.rows) {
    const line = body.insertRow();
    for (const value of row) line.appendChild(element('td', typeof value === 'number' ? 'number' : '', format(value)));
  }
  wrapper.appendChild(grid);
  return wrapper;
}

// What Chart.js draws: one bar or point per x value, and one series per y column. A report's
// leading text columns are its GROUP BY keys: those other than x split each y into one series
// per key (tenant, modality, ...), stacked in a bar chart.
function series(report, result) {
  const ys = names(report.y);
  const missing = [report.x, ...ys].filter((name) => !result.columns.includes(name));
  if (missing.length) throw new Error(`the report has no column ${missing.join(', ')} to chart`);
  const x = result.columns.indexOf(report.x);
  const keys = [];
  for (const [index, column] of result.columns.entries()) {
    if (ys.includes(column) || result.rows.some((row) => typeof row[index] === 'number')) break;
    if (index !== x) keys.push(index);
  }
  const labels = [...new Set(result.rows.map((row) => format(row[x])))];
  const sets = new Map();
  for (const row of result.rows) {
    const key = keys.map((index) => (row[index] === null ? '(none)' : format(row[index]))).join(' · ');
    for (const y of ys) {
      const name = keys.length && ys.length > 1 ? `${key} · ${y}` : keys.length ? key : y;
      if (!sets.has(name)) sets.set(name, new Map());
      const values = sets.get(name);
      const label = format(row[x]);
      const value = row[result.columns.indexOf(y)];
      values.set(label, values.has(label) && value !== null ? values.get(label) + value : value);
    }
  }
  const datasets = [...sets].map(([label, values], n) => ({
    label,
    data: labels.map((at) => values.get(at) ?? null),
    backgroundColor: PALETTE[n % PALETTE.length],
    borderColor: PALETTE[n % PALETTE.length],
  }));
  return { labels, datasets, stacked: keys.length > 0 && report.chart === 'bar' };
}

// UIDs are long and differ at their end: a tick shows the end.
function tick(value) {
  const label = String(this.getLabelForValue(value));
  return label.length > 24 ? `…${label.slice(-23)}` : label;
}

function chart(report, result) {
  const { labels, datasets, stacked } = series(report, result);
  // Counts get whole-number ticks, not 0.5 steps; durations and ratios keep their decimals.
  const whole = datasets.every((set) => set.data.every((value) => value === null || Number.isInteger(value)));
  const holder = element('div', 'chart');
  const canvas = element('canvas');
  canvas.setAttribute('role', 'img');
  canvas.setAttribute('aria-label', `${report.title}: chart`);
  holder.appendChild(canvas);
  return {
    holder,
    draw() {
      charts.push(
        new window.Chart(canvas, {
          type: report.chart,
          data: { labels, datasets },
          options: {
            // Drawn at once: what is on screen is the data, not a frame of an animation.
            animation: false,
            maintainAspectRatio: false,
            plugins: { legend: { display: datasets.length > 1 } },
            scales: {
              x: { stacked, ticks: { callback: tick } },
              y: { stacked, beginAtZero: true, ticks: whole ? { precision: 0 } : {} },
            },
          },
        }),
      );
    },
  };
}

async function show(report, card) {
  const status = card.querySelector('.status');
  try {
    const result = await getJson(`analytics/reports/${encodeURIComponent(report.name)}`);
    const drawn = report.chart !== 'table' && window.Chart && result.rows.length ? chart(report, result) : null;
    status.textContent = result.rows.length
      ? `${result.rows.length} ${result.rows.length === 1 ? 'row' : 'rows'}`
      : 'No rows yet: nothing of this kind has reached the analytics tables.';
    if (drawn) {
      card.insertBefore(drawn.holder, status);
      drawn.draw();
    }
    card.appendChild(table(result));
    card.dataset.state = 'ready';
  } catch (error) {
    status.textContent = `This report failed: ${error.message}`;
    card.dataset.state = 'failed';
  }
}

async function load() {
  const main = document.getElementById('reports');
  const scope = document.getElementById('scope');
  const notice = document.getElementById('notice');
  document.body.dataset.state = 'loading';
  while (charts.length) charts.pop().destroy();
  main.replaceChildren();
  try {
    const catalogue = await getJson('analytics/reports');
    const who = catalogue.tenant === null ? 'every tenant' : `tenant ${catalogue.tenant}`;
    scope.textContent = `${catalogue.reports.length} reports, ${who}, as of ${new Date().toLocaleTimeString()}`;
    const charted = catalogue.reports.some((report) => report.chart !== 'table');
    notice.hidden = Boolean(window.Chart) || !charted;
    notice.textContent = 'Charts are not installed, so each report is its table alone: run `make install`, then restart pacsflow web.';
    const shown = catalogue.reports.map((report) => {
      const card = element('section', 'card');
      card.dataset.report = report.name;
      card.dataset.state = 'loading';
      card.appendChild(element('h2', '', report.title));
      card.appendChild(element('p', 'description', report.description));
      card.appendChild(element('p', 'status', 'Loading ...'));
      main.appendChild(card);
      return show(report, card);
    });
    await Promise.all(shown);
  } catch (error) {
    scope.textContent = `The reports could not be listed: ${error.message}`;
  }
  document.body.dataset.state = 'ready';
}

document.getElementById('refresh').addEventListener('click', load);
load();
