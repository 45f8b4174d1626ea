#!/usr/bin/env node
// Test driver for the unmodified @supabase/realtime-js client.
//
// The gateway's integration tests spawn this script and talk to it with JSON
// lines: one command per line on stdin, one event per line on stdout. Only
// events are written to stdout; everything else (client logs, warnings) goes
// to stderr. See ../README.md for the full protocol.

import { createRequire } from 'node:module'
import readline from 'node:readline'

const require = createRequire(import.meta.url)

// realtime-js (and phoenix) could in theory print with console.log; stdout is
// reserved for events, so route every console output to stderr.
for (const name of ['log', 'info', 'debug', 'warn']) {
  console[name] = (...args) => console.error(...args)
}

// ---------------------------------------------------------------- output

let exiting = false

function toBase64(buf) {
  return Buffer.from(buf).toString('base64')
}

// JSON.stringify replacer: keep client values as they are, but make the few
// non-JSON things the client can hand us representable.
function replacer(_key, value) {
  if (value instanceof ArrayBuffer) return { $binary_base64: toBase64(value) }
  if (ArrayBuffer.isView(value) && !(value instanceof DataView)) {
    return { $binary_base64: toBase64(value.buffer.slice(value.byteOffset, value.byteOffset + value.byteLength)) }
  }
  if (value instanceof Error) return errorMessage(value)
  if (typeof value === 'bigint') return value.toString()
  return value
}

function emit(obj) {
  // After "exit"/EOF nothing more is reported (the client's own disconnect
  // would otherwise report CHANNEL_ERROR for every channel).
  if (exiting && obj.ev !== 'fatal') return
  let line
  try {
    line = JSON.stringify(obj, replacer)
  } catch (e) {
    line = JSON.stringify({ ev: 'error', error: `driver could not serialize event: ${errorMessage(e)}` })
  }
  // Writes to pipes and files are synchronous for process.stdout on Linux,
  // so every line is flushed before the next statement runs.
  process.stdout.write(line + '\n')
}

function errorMessage(e) {
  if (e === null || e === undefined) return null
  if (e instanceof Error) return e.message
  if (typeof e === 'string') return e
  try {
    return JSON.stringify(e)
  } catch {
    return String(e)
  }
}

function withId(cmd, obj) {
  if (cmd && cmd.id !== undefined && cmd.id !== null) obj.id = cmd.id
  return obj
}

let fatalSeen = false

function fatal(e) {
  if (fatalSeen) return
  fatalSeen = true
  exiting = true
  emit({ ev: 'fatal', error: errorMessage(e) })
  if (e && e.stack) process.stderr.write(`${e.stack}\n`)
  process.exit(1)
}

process.on('uncaughtException', fatal)
process.on('unhandledRejection', fatal)

// ---------------------------------------------------------------- client

const { RealtimeClient, RealtimeChannel } = require('@supabase/realtime-js')
const { version: CLIENT_VERSION } = require('@supabase/realtime-js/package.json')
const WebSocket = require('ws')
// Feature check against the installed client (httpSend appeared in 2.x).
const HAS_HTTP_SEND = typeof RealtimeChannel?.prototype?.httpSend === 'function'

function parseJsonEnv(name) {
  const raw = process.env[name]
  if (raw === undefined || raw === '') return {}
  const parsed = JSON.parse(raw)
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
    throw new Error(`${name} must be a JSON object`)
  }
  return parsed
}

let client
try {
  const url = process.env.REALTIME_URL
  if (!url) throw new Error('REALTIME_URL is not set')
  const apikey = process.env.REALTIME_APIKEY
  if (!apikey) throw new Error('REALTIME_APIKEY is not set')
  const options = {
    // Node.js 20 has no global WebSocket: hand the `ws` constructor to the
    // client (RealtimeClientOptions.transport, passed on to the Phoenix socket).
    transport: WebSocket,
    params: { apikey, ...parseJsonEnv('REALTIME_PARAMS') },
  }
  if (process.env.REALTIME_VSN) options.vsn = process.env.REALTIME_VSN
  if (process.env.REALTIME_DEBUG) {
    options.logger = (kind, msg, data) => {
      let extra = ''
      if (data !== undefined) {
        try {
          extra = ' ' + JSON.stringify(data, replacer)
        } catch {
          extra = ' ' + String(data)
        }
      }
      process.stderr.write(`[realtime-js] ${kind}: ${msg}${extra}\n`)
    }
  }
  client = new RealtimeClient(url, options)
} catch (e) {
  fatal(e)
}

// Optional socket-level events (REALTIME_SOCKET_EVENTS=1). Off by default so
// that stdout carries only the events of the documented protocol.
if (process.env.REALTIME_SOCKET_EVENTS) {
  const sock = client.socketAdapter
  sock.onOpen(() => emit({ ev: 'socket', state: 'open' }))
  sock.onClose((event) =>
    emit({ ev: 'socket', state: 'close', code: event?.code ?? null, reason: event?.reason ?? null })
  )
  sock.onError((error) => emit({ ev: 'socket', state: 'error', error: errorMessage(error?.error ?? error?.message ?? error) }))
}

/** name -> { channel, subscribeCmd } */
const channels = new Map()

function needString(cmd, key) {
  const v = cmd[key]
  if (typeof v !== 'string') throw new Error(`"${key}" must be a string`)
  return v
}

function getChannel(cmd) {
  const name = needString(cmd, 'channel')
  const entry = channels.get(name)
  if (!entry) throw new Error(`unknown channel "${name}" (subscribe first)`)
  return { name, channel: entry.channel }
}

function dropClientChannel(channel) {
  channel.teardown()
  client.channels = client.channels.filter((c) => c !== channel)
}

function decodePayload(cmd) {
  if (typeof cmd.payload_base64 === 'string') {
    const buf = Buffer.from(cmd.payload_base64, 'base64')
    return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength)
  }
  return cmd.payload
}

// Each handler returns once the command has been handed to the client (so the
// next command sees its effect); results that arrive later are emitted from
// promise callbacks without holding up the command queue.
const handlers = {
  async subscribe(cmd) {
    const name = needString(cmd, 'channel')
    const existing = channels.get(name)
    if (existing) {
      if (existing.channel.state !== 'closed') {
        throw new Error(`channel "${name}" already exists (state ${existing.channel.state})`)
      }
      channels.delete(name)
      dropClientChannel(existing.channel)
    }
    const changes = cmd.changes ?? []
    if (!Array.isArray(changes)) throw new Error('"changes" must be a list')
    const listenBroadcast = cmd.listen_broadcast ?? []
    if (!Array.isArray(listenBroadcast) || !listenBroadcast.every((e) => typeof e === 'string')) {
      throw new Error('"listen_broadcast" must be a list of strings')
    }
    changes.forEach((entry, i) => {
      if (entry === null || typeof entry !== 'object' || Array.isArray(entry)) {
        throw new Error(`changes[${i}] must be an object`)
      }
    })

    // realtime-js keeps only one token for the whole client: a per-subscribe
    // access_token is applied with setAuth (what supabase-js does for a user).
    if (typeof cmd.access_token === 'string') await client.setAuth(cmd.access_token)

    const config = {}
    for (const key of ['broadcast', 'presence', 'private', 'postgres_changes_options']) {
      if (Object.prototype.hasOwnProperty.call(cmd, key)) config[key] = cmd[key]
    }
    const stale = client.channels.find((c) => c.topic === `realtime:${name}`)
    if (stale) dropClientChannel(stale)
    const channel = client.channel(name, { config })
    channels.set(name, { channel })

    changes.forEach((entry, i) => {
      // Exactly the keys given: realtime-js puts this object into the join payload.
      const filter = { ...entry }
      channel.on('postgres_changes', filter, (payload) =>
        emit({ ev: 'change', channel: name, binding: i, payload })
      )
    })
    for (const event of listenBroadcast) {
      channel.on('broadcast', { event }, (payload) =>
        emit({ ev: 'broadcast', channel: name, listener: event, payload })
      )
    }
    if (cmd.listen_presence) {
      channel.on('presence', { event: 'sync' }, () =>
        emit({ ev: 'presence', channel: name, kind: 'sync', key: null, current: null, new: null, left: null })
      )
      channel.on('presence', { event: 'join' }, (p) =>
        emit({
          ev: 'presence',
          channel: name,
          kind: 'join',
          key: p?.key ?? null,
          current: p?.currentPresences ?? null,
          new: p?.newPresences ?? null,
          left: null,
        })
      )
      channel.on('presence', { event: 'leave' }, (p) =>
        emit({
          ev: 'presence',
          channel: name,
          kind: 'leave',
          key: p?.key ?? null,
          current: p?.currentPresences ?? null,
          new: null,
          left: p?.leftPresences ?? null,
        })
      )
    }
    channel.on('system', {}, (payload) => emit({ ev: 'system', channel: name, payload }))

    channel.subscribe((status, err) => {
      emit(withId(cmd, { ev: 'status', channel: name, status, error: err ? errorMessage(err) : null }))
    })
  },

  async send(cmd) {
    const { channel } = getChannel(cmd)
    const args = { type: cmd.type ?? 'broadcast', event: needString(cmd, 'event'), payload: decodePayload(cmd) }
    channel
      .send(args)
      .then((result) => emit(withId(cmd, { ev: 'sent', channel: cmd.channel, result })))
      .catch((e) => emit(withId(cmd, { ev: 'sent', channel: cmd.channel, result: 'error', error: errorMessage(e) })))
  },

  async http_send(cmd) {
    const name = needString(cmd, 'channel')
    const event = needString(cmd, 'event')
    if (!HAS_HTTP_SEND) {
      throw new Error(`channel.httpSend does not exist in realtime-js ${CLIENT_VERSION}`)
    }
    let channel
    let temporary = false
    const entry = channels.get(name)
    if (entry) {
      channel = entry.channel
    } else {
      // httpSend needs no subscription; use a throwaway channel object.
      const config = {}
      if (Object.prototype.hasOwnProperty.call(cmd, 'private')) config.private = cmd.private
      const stale = client.channels.find((c) => c.topic === `realtime:${name}`)
      if (stale) dropClientChannel(stale)
      channel = client.channel(name, { config })
      temporary = true
    }
    const opts = {}
    if (cmd.persist !== undefined) opts.persist = cmd.persist
    if (cmd.timeout !== undefined) opts.timeout = cmd.timeout
    const done = (obj) => {
      if (temporary) dropClientChannel(channel)
      emit(withId(cmd, { ev: 'http_sent', channel: name, ...obj }))
    }
    channel
      .httpSend(event, decodePayload(cmd), opts)
      .then((result) => done({ ok: result?.success === true, result, error: result?.error ?? null, status: result?.status ?? null }))
      .catch((e) => done({ ok: false, result: null, error: errorMessage(e), status: null }))
  },

  async track(cmd) {
    const { channel } = getChannel(cmd)
    channel
      .track(cmd.payload ?? {})
      .then((result) => emit(withId(cmd, { ev: 'tracked', channel: cmd.channel, result })))
      .catch((e) => emit(withId(cmd, { ev: 'tracked', channel: cmd.channel, result: 'error', error: errorMessage(e) })))
  },

  async untrack(cmd) {
    const { channel } = getChannel(cmd)
    channel
      .untrack()
      .then((result) => emit(withId(cmd, { ev: 'untracked', channel: cmd.channel, result })))
      .catch((e) => emit(withId(cmd, { ev: 'untracked', channel: cmd.channel, result: 'error', error: errorMessage(e) })))
  },

  async presence_state(cmd) {
    const { name, channel } = getChannel(cmd)
    emit(withId(cmd, { ev: 'presence_state', channel: name, state: channel.presenceState() }))
  },

  async set_auth(cmd) {
    const token = cmd.token ?? null
    if (token !== null && typeof token !== 'string') throw new Error('"token" must be a string or null')
    await client.setAuth(token)
    emit(withId(cmd, { ev: 'auth_set', result: null }))
  },

  async unsubscribe(cmd) {
    const { name, channel } = getChannel(cmd)
    channels.delete(name)
    client
      .removeChannel(channel)
      .then((result) => emit(withId(cmd, { ev: 'unsubscribed', channel: name, result })))
      .catch((e) => emit(withId(cmd, { ev: 'unsubscribed', channel: name, result: 'error', error: errorMessage(e) })))
  },

  async connect(cmd) {
    let settled = false
    const sock = client.socketAdapter
    const finish = (obj) => {
      if (settled) return
      settled = true
      emit(withId(cmd, { ev: 'connected', ...obj }))
    }
    if (client.isConnected()) return finish({ ok: true, error: null })
    sock.onOpen(() => finish({ ok: true, error: null }))
    sock.onError((e) => finish({ ok: false, error: errorMessage(e?.error ?? e?.message ?? e) ?? 'transport error' }))
    sock.onClose((e) => finish({ ok: false, error: `socket closed: ${e?.code ?? ''} ${e?.reason ?? ''}`.trim() }))
    client.connect()
  },

  async disconnect(cmd) {
    const result = await client.disconnect()
    emit(withId(cmd, { ev: 'disconnected', result: result ?? null }))
  },

  // A client that goes silent (a laptop lid closing): no more heartbeats, and nothing more is
  // read from the socket; what arrives stays unread in the kernel.
  async freeze(cmd) {
    const sock = client.socketAdapter.socket
    sock.clearHeartbeats()
    const tcp = sock.conn._socket
    // ws resumes its socket when its parser drains: keep it paused.
    tcp.resume = () => tcp
    tcp.pause()
    emit(withId(cmd, { ev: 'frozen' }))
  },

  // The silent client comes back to a dead connection: whatever its kernel held is lost
  // with it, and realtime-js reconnects on its own.
  async wake(cmd) {
    const tcp = client.socketAdapter.socket.conn._socket
    // Nothing that arrived while frozen reaches the client: it is dropped unread (ws would
    // otherwise parse what the paused socket buffered when it closes).
    tcp.removeAllListeners('data')
    while (tcp.read() !== null) {}
    tcp.destroy()
    emit(withId(cmd, { ev: 'woken' }))
  },

  async exit(_cmd) {
    await shutdown(0)
  },
}

async function shutdown(code) {
  if (exiting) return
  exiting = true
  try {
    await Promise.race([client.disconnect(), new Promise((r) => setTimeout(r, 2000))])
  } catch (e) {
    process.stderr.write(`disconnect on exit failed: ${errorMessage(e)}\n`)
  }
  process.exit(code)
}

// ---------------------------------------------------------------- command loop

let queue = Promise.resolve()

function enqueue(fn) {
  queue = queue.then(async () => {
    if (!exiting) await fn()
  })
}

function handleLine(line) {
  if (line.trim() === '') return
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (e) {
    enqueue(() => emit({ ev: 'error', error: `invalid JSON command: ${errorMessage(e)}`, line }))
    return
  }
  if (cmd === null || typeof cmd !== 'object' || Array.isArray(cmd)) {
    enqueue(() => emit({ ev: 'error', error: 'command must be a JSON object', line }))
    return
  }
  const handler = Object.prototype.hasOwnProperty.call(handlers, cmd.cmd) ? handlers[cmd.cmd] : null
  if (!handler) {
    enqueue(() =>
      emit(withId(cmd, { ev: 'error', cmd: cmd.cmd ?? null, error: `unknown command: ${JSON.stringify(cmd.cmd ?? null)}` }))
    )
    return
  }
  enqueue(async () => {
    try {
      await handler(cmd)
    } catch (e) {
      emit(withId(cmd, { ev: 'error', cmd: cmd.cmd, channel: cmd.channel ?? null, error: errorMessage(e) }))
    }
  })
}

emit({ ev: 'ready', client: 'realtime-js', version: CLIENT_VERSION, vsn: client.vsn })

const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity, terminal: false })
rl.on('line', handleLine)
rl.on('close', () => {
  queue = queue.then(() => shutdown(0))
})
