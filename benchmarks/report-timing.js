// Superseded by benchmarks/report_timing.py (Playwright, a test dependency; puppeteer-core is not
// installed anywhere here); kept for the measurements of issue #25 in RESULTS.md.
// How fast a report opens and pages in a real browser (issue #25's targets): time from navigation
// to the end of the page's first render, and the median of 10 page changes (click on "next" to
// the next frame). Needs Debian's chromium and puppeteer-core (npm install puppeteer-core@22 in
// any folder on NODE_PATH); not part of the test suite.
//   node benchmarks/report-timing.js file:///path/to/results/report.html
const puppeteer = require('puppeteer-core');
(async () => {
  const browser = await puppeteer.launch({ executablePath: '/usr/bin/chromium', args: ['--no-sandbox', '--disable-gpu'], headless: true });
  const page = await browser.newPage();
  await page.setViewport({ width: 1400, height: 1000 });
  const url = process.argv[2];
  const t0 = Date.now();
  await page.goto(url, { waitUntil: 'load' });
  await page.waitForSelector('body[data-ready-ms]');
  const fcp = await page.evaluate(() => (performance.getEntriesByName('first-contentful-paint')[0] || {}).startTime);
  const ready = await page.evaluate(() => document.body.dataset.readyMs);
  console.log('load+ready', Date.now() - t0, 'ms; first contentful paint', Math.round(fcp), 'ms; script ready', ready, 'ms');
  const times = [];
  for (let i = 0; i < 10; i++) {
    const ms = await page.evaluate(() => new Promise(res => {
      const t = performance.now(); document.getElementById('next').click();
      requestAnimationFrame(() => setTimeout(() => res(performance.now() - t), 0));
    }));
    times.push(ms);
  }
  times.sort((a, b) => a - b);
  console.log('page change ms: median', times[5].toFixed(1), 'max', times[9].toFixed(1));
  await browser.close();
})();
