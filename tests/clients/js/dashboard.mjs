// Headless Chromium (the system's, driven over the DevTools protocol by playwright-core) on the
// gateway's admin dashboard, recording every request the page makes. Driven over stdin/stdout
// JSON lines, one answer per command, in order:
//   out {"ev":"ready"}
//   in  {"cmd":"open","url":"http://.../admin"}        out {"ev":"opened","status":200}
//   in  {"cmd":"type","selector":"#x","text":"..."}    out {"ev":"typed"}
//   in  {"cmd":"click","selector":"#x"}                out {"ev":"clicked"}
//   in  {"cmd":"wait","expr":"<JS expression>","timeout":ms}
//                                                      out {"ev":"waited","value":...}
//                                                       or {"ev":"timeout","error":...,"console":[...]}
//   in  {"cmd":"eval","expr":"<JS expression>"}        out {"ev":"value","value":...}
//   in  {"cmd":"screenshot","path":"/.../x.png"}       out {"ev":"saved","path":...}
//   in  {"cmd":"requests"}                             out {"ev":"requests","requests":[{url,method,type}],"console":[...]}
//   in  {"cmd":"exit"}
// `open` starts a new browser context (empty sessionStorage) and clears the request log.
// CHROMIUM names the browser binary (default /usr/bin/chromium).
import { createInterface } from 'node:readline'
import { chromium } from 'playwright-core'

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox'],
})
let context = null
let page = null
const requests = []
const consoleLines = []

async function open(url) {
  if (context) await context.close()
  requests.length = 0
  consoleLines.length = 0
  context = await browser.newContext({ viewport: { width: 1280, height: 1100 } })
  page = await context.newPage()
  page.on('request', (r) => requests.push({ url: r.url(), method: r.method(), type: r.resourceType() }))
  page.on('console', (m) => consoleLines.push(`${m.type()}: ${m.text()}`))
  page.on('pageerror', (e) => consoleLines.push(`pageerror: ${e.message}`))
  const response = await page.goto(url)
  return response?.status() ?? null
}

emit({ ev: 'ready' })

for await (const line of createInterface({ input: process.stdin })) {
  if (!line.trim()) continue
  const cmd = JSON.parse(line)
  if (cmd.cmd === 'exit') break
  try {
    switch (cmd.cmd) {
      case 'open':
        emit({ ev: 'opened', status: await open(cmd.url) })
        break
      case 'type':
        await page.fill(cmd.selector, cmd.text)
        emit({ ev: 'typed' })
        break
      case 'click':
        await page.click(cmd.selector)
        emit({ ev: 'clicked' })
        break
      case 'wait': {
        // Evaluated over the DevTools protocol every 100 ms, not by playwright's in-page
        // polling: that one compiles the expression inside the page, which the page's
        // Content-Security-Policy (no 'unsafe-eval') rightly forbids.
        const deadline = Date.now() + (cmd.timeout ?? 30000)
        let value = null
        let error = null
        for (;;) {
          try {
            value = await page.evaluate(cmd.expr)
            error = null
          } catch (e) {
            error = String(e)
          }
          if (value || Date.now() > deadline) break
          await new Promise((resolve) => setTimeout(resolve, 100))
        }
        if (value) emit({ ev: 'waited', value })
        else emit({ ev: 'timeout', last: value, error, console: [...consoleLines] })
        break
      }
      case 'eval':
        emit({ ev: 'value', value: await page.evaluate(cmd.expr) })
        break
      case 'screenshot':
        await page.screenshot({ path: cmd.path, fullPage: true })
        emit({ ev: 'saved', path: cmd.path })
        break
      case 'requests':
        emit({ ev: 'requests', requests: [...requests], console: [...consoleLines] })
        break
      default:
        emit({ ev: 'error', error: `unknown command ${cmd.cmd}` })
    }
  } catch (e) {
    emit({ ev: 'error', error: String(e), console: [...consoleLines] })
  }
}
if (context) await context.close()
await browser.close()
