// Headless Chromium (the system's, driven over the DevTools protocol by playwright-core) on a
// page served from another origin than the gateway: a static server on its own loopback port
// serves browser/page.html and the npm packages of node_modules. Driven over stdin/stdout JSON
// lines like driver.mjs:
//   out {"ev":"ready","origin":"http://127.0.0.1:<port>"}  (the page's origin)
//   in  {"cmd":"run","realtime":"ws://...","apikey":"...","channel":"..."}
//   out {"ev":"result", ...what realtime-js returned, "console":[...], "failed":[...]}
//   in  {"cmd":"exit"}
// CHROMIUM names the browser binary (default /usr/bin/chromium).
import { createServer } from 'node:http'
import { readFile, stat } from 'node:fs/promises'
import { createInterface } from 'node:readline'
import { dirname, extname, join, normalize } from 'node:path'
import { fileURLToPath } from 'node:url'
import { chromium } from 'playwright-core'

const root = dirname(fileURLToPath(import.meta.url))
const types = { '.html': 'text/html', '.js': 'text/javascript', '.mjs': 'text/javascript', '.json': 'application/json' }

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

// TypeScript's ES module output imports `./lib/constants` without an extension, as bundlers
// resolve it: so does this server (`.js`, then `/index.js`).
async function resolveFile(path) {
  for (const candidate of [path, path + '.js', join(path, 'index.js')]) {
    try {
      if ((await stat(candidate)).isFile()) return candidate
    } catch {}
  }
  return null
}

const server = createServer(async (req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, 'http://x').pathname))
  const allowed = path.startsWith('/node_modules/') || path.startsWith('/browser/')
  const file = allowed && !path.includes('..') ? await resolveFile(join(root, path)) : null
  if (!file) {
    res.writeHead(404).end()
    return
  }
  res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' })
  res.end(await readFile(file))
})
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve))
const origin = `http://127.0.0.1:${server.address().port}`

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
})
const page = await browser.newPage()
const consoleLines = []
const failed = []
page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`))
page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`))
page.on('requestfailed', (r) => failed.push(`${r.method()} ${r.url()}: ${r.failure()?.errorText}`))
await page.goto(`${origin}/browser/page.html`)
await page.waitForFunction(() => window.pageReady === true, null, { timeout: 15000 })
emit({ ev: 'ready', origin })

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue
  const cmd = JSON.parse(line)
  if (cmd.cmd === 'exit') break
  if (cmd.cmd === 'run') {
    consoleLines.length = 0
    failed.length = 0
    try {
      const result = await page.evaluate((args) => window.sendOverRest(args), cmd)
      emit({ ev: 'result', ...result, console: [...consoleLines], failed: [...failed] })
    } catch (e) {
      emit({ ev: 'result', error: String(e), console: [...consoleLines], failed: [...failed] })
    }
  }
}
await browser.close()
server.close()
