// Screenshots of TensorBoard's Custom Scalars, HParams and Images tabs, as a person sees them, for
// docs/tensorboard.md. Starts the venv's tensorboard on a free localhost port for each log directory,
// opens each tab in headless Chromium (driven by playwright-core) with smoothing off and "ignore
// outliers in chart scaling" unchecked, and writes <prefix>-<tab>.png (and <prefix>-continual.png, the
// Custom Scalars tab's first section). Remake the docs' screenshots:
//
//   npm install --prefix /tmp/pw playwright-core          # once; the browser is the system's chromium
//   bash scripts/demo.sh && nested-ac sweep examples/quick-sweep.yaml --sweep-dir runs/quick-sweep
//   NODE_PATH=/tmp/pw/node_modules node scripts/tensorboard-screenshots.cjs runs/demo docs/tensorboard-demo \
//       runs/quick-sweep docs/tensorboard-sweep
//
// Environment: CHROMIUM (default /usr/bin/chromium), TENSORBOARD (default .venv/bin/tensorboard).
"use strict";
const { chromium } = require("playwright-core");
const { spawn } = require("node:child_process");
const net = require("node:net");

const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const TENSORBOARD = process.env.TENSORBOARD || ".venv/bin/tensorboard";
const FLAGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
  "--no-first-run",
];
// Tab → the URL fragment (TensorBoard keeps smoothing in it) and the page's size; the Custom Scalars page
// grows to show its last section whole.
const TABS = {
  "custom-scalars": { hash: "custom_scalars&_smoothingWeight=0", width: 1400, height: 1200 },
  hparams: { hash: "hparams", width: 1900, height: 700 },
  images: { hash: "images", width: 1400, height: 900 },
};
const SECTION = "tf-category-paginated-view"; // one section of the Custom Scalars tab

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
    server.on("error", reject);
  });
}

async function json(url) {
  const response = await fetch(url);
  return response.ok ? response.json() : null;
}

async function until(what, ready, seconds = 120) {
  const deadline = Date.now() + seconds * 1000;
  while (Date.now() < deadline) {
    try {
      if (await ready()) return;
    } catch {
      // not up yet
    }
    await new Promise((resolve) => setTimeout(resolve, 500));
  }
  throw new Error(`${what} not ready after ${seconds} s`);
}

async function shoot(browser, logdir, prefix) {
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const args = ["--logdir", logdir, "--host", "127.0.0.1", "--port", String(port), "--load_fast", "false"];
  const server = spawn(TENSORBOARD, args, { stdio: "ignore" });
  try {
    await until("tensorboard", async () => {
      const layout = await json(`${url}/data/plugin/custom_scalars/layout`);
      return layout && layout.category && layout.category.length > 0;
    });
    await new Promise((resolve) => setTimeout(resolve, 3000)); // every run's events loaded
    for (const [tab, { hash, width, height }] of Object.entries(TABS)) {
      const context = await browser.newContext({ viewport: { width, height }, deviceScaleFactor: 1 });
      // A few points per chart: with outliers ignored TensorBoard would cut the extremes off (a P_k
      // far below the collapse line among them); the page reads this setting from local storage.
      await context.addInitScript(() => window.localStorage.setItem("_ignoreYOutliers", "false"));
      const page = await context.newPage();
      await page.goto(`${url}/#${hash}`, { waitUntil: "networkidle" });
      await page.waitForTimeout(4000); // charts draw after their data arrives
      if (tab === "custom-scalars") {
        const last = await page.locator(SECTION).last().boundingBox();
        await page.setViewportSize({ width, height: Math.ceil(last.y + last.height) + 24 });
        await page.waitForTimeout(4000); // the charts that came into view
      }
      await page.screenshot({ path: `${prefix}-${tab}.png` });
      console.log(`${prefix}-${tab}.png`);
      if (tab === "custom-scalars") {
        // Its first section alone (continual: the verdict), for the docs' front page.
        await page.locator(SECTION).first().screenshot({ path: `${prefix}-continual.png` });
        console.log(`${prefix}-continual.png`);
      }
      await context.close();
    }
  } finally {
    server.kill();
  }
}

async function main() {
  const pairs = process.argv.slice(2);
  if (pairs.length === 0 || pairs.length % 2 !== 0) {
    console.error("usage: node scripts/tensorboard-screenshots.cjs LOGDIR PREFIX [LOGDIR PREFIX ...]");
    process.exit(2);
  }
  const browser = await chromium.launch({ executablePath: CHROMIUM, args: FLAGS });
  try {
    for (let i = 0; i < pairs.length; i += 2) await shoot(browser, pairs[i], pairs[i + 1]);
  } finally {
    await browser.close();
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
