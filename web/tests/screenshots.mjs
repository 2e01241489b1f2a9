// Takes the README's screenshots of a running cdcdd (not part of make test):
//   node web/tests/screenshots.mjs http://127.0.0.1:8080 RUN_ID docs/screenshots
// writes dashboard-run.png (laptop width: the live loss curve and the entropy-vs-sigma fit)
// and dashboard-phone.png (phone width), in headless Debian Chromium like the tests.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [base = 'http://127.0.0.1:8080', runId = '1', out = 'docs/screenshots'] = process.argv.slice(2);
fs.mkdirSync(out, { recursive: true });
const userDir = fs.mkdtempSync(path.join(os.tmpdir(), 'cdcd-shots-'));
const ctx = await chromium.launchPersistentContext(userDir, {
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  viewport: { width: 1280, height: 900 },
  deviceScaleFactor: 1,
});
try {
  const page = ctx.pages()[0] || (await ctx.newPage());
  await page.goto(`${base}/#/runs/${runId}`);
  await page.waitForFunction(() => Number(document.querySelector('#entropy-chart')?.dataset.fit) === 1, null, { timeout: 30000 });
  await page.waitForTimeout(3000); // a few live updates
  // the top of the page down to the end of the entropy and fit-history panels
  const bottom = await page.evaluate(() => Math.max(...['#entropy-panel', '#fits-panel'].map((s) => {
    const r = document.querySelector(s).getBoundingClientRect();
    return r.bottom + window.scrollY;
  })));
  await page.setViewportSize({ width: 1280, height: Math.ceil(bottom) + 12 });
  await page.waitForTimeout(800);
  await page.screenshot({ path: path.join(out, 'dashboard-run.png') });
  await page.setViewportSize({ width: 390, height: 844 });
  await page.waitForTimeout(800);
  await page.evaluate(() => window.scrollTo(0, 0));
  await page.screenshot({ path: path.join(out, 'dashboard-phone.png') });
  console.log(`wrote ${out}/dashboard-run.png and ${out}/dashboard-phone.png`);
} finally {
  await ctx.close();
  fs.rmSync(userDir, { recursive: true, force: true });
}
