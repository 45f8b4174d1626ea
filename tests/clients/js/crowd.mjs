#!/usr/bin/env node
// Many unmodified @supabase/realtime-js clients in one Node.js process, for tests that need a
// crowd (a separate process per client would cost far more memory than the gateway).
//
// Environment: REALTIME_URL and REALTIME_APIKEY as for driver.mjs, and REALTIME_CLIENTS (how
// many clients, default 100). Client i subscribes to channel `crowd<i>` (broadcast only) at
// start. Events, one JSON object per line on stdout:
//   {"ev":"connecting","client":i,"attempt":n}   the client opened a socket (n = 1, 2, ...)
//   {"ev":"status","client":i,"status":"SUBSCRIBED"|...,"error":...}
//   {"ev":"socket","client":i,"state":"close","code":c,"reason":r}
// EOF on stdin disconnects every client and exits with status 0.

import { createRequire } from 'node:module'
import readline from 'node:readline'

const require = createRequire(import.meta.url)
for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args)
}

const { RealtimeClient } = require('@supabase/realtime-js')
const WebSocket = require('ws')

function emit(obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

function fatal(e) {
  emit({ ev: 'fatal', error: e instanceof Error ? e.message : String(e) })
  process.exit(1)
}
process.on('uncaughtException', fatal)
process.on('unhandledRejection', fatal)

const url = process.env.REALTIME_URL
const apikey = process.env.REALTIME_APIKEY
if (!url || !apikey) fatal(new Error('REALTIME_URL and REALTIME_APIKEY must be set'))
const count = Number(process.env.REALTIME_CLIENTS ?? '100')

const clients = []
for (let i = 0; i < count; i++) {
  let attempts = 0
  // The client's own transport, counted: each construction is one connection attempt.
  class CountedWebSocket extends WebSocket {
    constructor(...args) {
      super(...args)
      attempts += 1
      emit({ ev: 'connecting', client: i, attempt: attempts })
    }
  }
  const client = new RealtimeClient(url, { transport: CountedWebSocket, params: { apikey } })
  client.socketAdapter.onClose((event) =>
    emit({ ev: 'socket', client: i, state: 'close', code: event?.code ?? null, reason: event?.reason ?? null })
  )
  client
    .channel(`crowd${i}`)
    .subscribe((status, err) => emit({ ev: 'status', client: i, status, error: err ? String(err.message ?? err) : null }))
  clients.push(client)
}

const rl = readline.createInterface({ input: process.stdin, terminal: false })
rl.on('close', async () => {
  await Promise.allSettled(clients.map((c) => c.disconnect()))
  process.exit(0)
})
