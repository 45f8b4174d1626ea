// The admin dashboard: reads the gateway's sample stream (GET /admin/stream, server-sent events
// read with fetch so that the credential travels in the Authorization header, never in a URL),
// draws the charts on canvases, and lists connections from the admin API with a kick button
// each. Everything it shows comes from this origin; text from the gateway (channel names, audit
// details) is only ever set as text, never parsed as HTML.
'use strict'

const STORAGE_KEY = 'realtime-gateway.admin.credential'
const HISTORY_POINTS = 300
const RETRY_MS = [1000, 2000, 5000, 10000]
// Connections are listed from the admin API when the counts move, and at least this often.
const CONNECTIONS_REFRESH_MS = 5000

const $ = (id) => document.getElementById(id)

const view = {
  points: [],
  sample: null,
  abort: null,
  connectionsKey: '',
  connectionsAt: 0,
  connectionsLoading: false,
}

// ---- the credential -------------------------------------------------------------------------

function credential() {
  return sessionStorage.getItem(STORAGE_KEY)
}

function authorization() {
  return { Authorization: `Bearer ${credential()}` }
}

function showSignIn(message) {
  if (view.abort) view.abort.abort()
  view.abort = null
  sessionStorage.removeItem(STORAGE_KEY)
  $('dashboard').hidden = true
  $('sign-out').hidden = true
  $('sign-in').hidden = false
  $('sign-in-error').textContent = message || ''
  setLive('idle', 'not connected')
  $('credential').focus()
}

function showDashboard() {
  $('sign-in').hidden = true
  $('sign-out').hidden = false
  $('dashboard').hidden = false
}

class Refused extends Error {}

/** The message of a refusal's JSON body. */
async function refusal(response) {
  const body = await response.json().catch(() => ({}))
  return body.message || 'the credential was refused'
}

// ---- the stream -----------------------------------------------------------------------------

function setLive(state, text) {
  const live = $('live')
  live.dataset.state = state
  live.textContent = text
}

async function readStream(signal) {
  const response = await fetch('/admin/stream', {
    headers: { ...authorization(), Accept: 'text/event-stream' },
    cache: 'no-store',
    credentials: 'omit',
    signal,
  })
  if (response.status === 401 || response.status === 403) {
    throw new Refused(await refusal(response))
  }
  if (!response.ok) throw new Error(`the stream answered ${response.status}`)
  showDashboard()
  setLive('live', 'live')
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader()
  let buffer = ''
  for (;;) {
    const { value, done } = await reader.read()
    if (done) return null
    buffer += value
    let cut
    while ((cut = buffer.indexOf('\n\n')) >= 0) {
      const block = buffer.slice(0, cut)
      buffer = buffer.slice(cut + 2)
      const ended = dispatch(block)
      if (ended) return ended
    }
  }
}

/** Handles one event; returns the `end` event's body, which ends the stream. */
function dispatch(block) {
  let event = 'message'
  const data = []
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) continue
    const colon = line.indexOf(':')
    const field = colon < 0 ? line : line.slice(0, colon)
    let value = colon < 0 ? '' : line.slice(colon + 1)
    if (value.startsWith(' ')) value = value.slice(1)
    if (field === 'event') event = value
    else if (field === 'data') data.push(value)
  }
  if (data.length === 0) return null
  const body = JSON.parse(data.join('\n'))
  if (event === 'history') {
    view.points = body.slice(-HISTORY_POINTS)
    drawCharts()
  } else if (event === 'sample') {
    view.points.push(body.point)
    if (view.points.length > HISTORY_POINTS) view.points.shift()
    view.sample = body
    render(body)
  } else if (event === 'end') {
    return body
  }
  return null
}

async function run() {
  const controller = new AbortController()
  view.abort = controller
  let failures = 0
  while (!controller.signal.aborted) {
    try {
      const ended = await readStream(controller.signal)
      failures = 0
      if (ended && ended.reason !== 'shutdown') {
        showSignIn(`The stream ended: ${ended.message}`)
        return
      }
    } catch (e) {
      if (controller.signal.aborted) return
      if (e instanceof Refused) {
        showSignIn(e.message)
        return
      }
    }
    if (controller.signal.aborted) return
    const wait = RETRY_MS[Math.min(failures, RETRY_MS.length - 1)]
    failures += 1
    setLive('reconnecting', 'reconnecting')
    await new Promise((resolve) => setTimeout(resolve, wait))
  }
}

// ---- rendering ------------------------------------------------------------------------------

function el(tag, props, ...children) {
  const node = document.createElement(tag)
  for (const [key, value] of Object.entries(props || {})) {
    if (key === 'class') node.className = value
    else if (key === 'dataset') Object.assign(node.dataset, value)
    else node[key] = value
  }
  for (const child of children) {
    node.append(child instanceof Node ? child : document.createTextNode(String(child ?? '')))
  }
  return node
}

function fill(tableId, rows, columns, emptyText) {
  const body = $(tableId).tBodies[0]
  if (rows.length === 0) {
    body.replaceChildren(el('tr', {}, el('td', { class: 'empty', colSpan: columns }, emptyText)))
  } else {
    body.replaceChildren(...rows)
  }
}

function time(value) {
  if (!value) return '–'
  const date = new Date(value)
  return date.toLocaleTimeString()
}

function seconds(value) {
  if (value == null) return '–'
  if (value < 60) return `${value.toFixed(value < 10 ? 1 : 0)} s`
  const rest = Math.round(value % 60)
  return rest === 0 ? `${Math.floor(value / 60)} min` : `${Math.floor(value / 60)} min ${rest} s`
}

function millis(value) {
  if (value == null) return '–'
  return value < 10 ? `${value.toFixed(2)} ms` : `${Math.round(value)} ms`
}

function shortId(id) {
  return String(id).slice(0, 8)
}

function render(sample) {
  $('node').textContent = sample.node_id
  const c = sample.connections
  const cluster = c.cluster
  $('cluster-connections').textContent = cluster == null ? '–' : String(cluster)
  $('cap').textContent = String(c.cap)
  $('node-connections').textContent = String(c.node)
  $('warn-at').textContent = String(c.warn_at)
  $('warn-percent').textContent = String(c.warn_percent)
  const share = cluster == null ? null : (100 * cluster) / c.cap
  $('capacity-percent').textContent = share == null ? '–' : `${Math.round(share)} %`
  $('capacity-fill').style.width = `${Math.min(100, share ?? 0)}%`
  $('capacity-mark').style.left = `${c.warn_percent}%`
  $('capacity').dataset.state = c.warning ? 'warning' : 'ok'
  const banner = $('cap-warning')
  banner.hidden = !c.warning
  if (c.warning) {
    banner.textContent =
      `Connections have been at or above ${c.warn_percent} % of the cap since ${time(c.since)}` +
      ` (${cluster ?? '?'} of ${c.cap}); the warning ends below ${c.clear_percent} %.`
  }
  $('database-down').hidden = sample.database
  $('listener-down').hidden = sample.listener_connected

  const p = sample.point
  $('messages-rate').textContent = p.messages_per_second.toFixed(p.messages_per_second < 10 ? 1 : 0)
  $('latency-p99').textContent = millis(p.latency_p99_ms)
  $('latency-p50').textContent = millis(p.latency_p50_ms)
  drawCharts()

  $('stale-note').textContent =
    `(this node: silent over ${seconds(sample.stale_after_seconds)}; reaped at ${seconds(sample.reaped_after_seconds)})`
  fill('stale', sample.stale.map((s) => el('tr', {},
    el('td', { class: 'id', title: s.connection_id }, shortId(s.connection_id)),
    el('td', {}, s.remote_addr),
    el('td', {}, seconds(s.silent_seconds)),
  )), 3, 'none')

  const overview = sample.overview
  if (overview) {
    fill('nodes', overview.nodes.map((n) => el('tr', { class: n.silent_seconds > sample.reaped_after_seconds ? 'lost' : '' },
      el('td', {}, n.node_id),
      el('td', {}, n.listen_addr ?? ''),
      el('td', {}, n.connections),
      el('td', {}, n.channels),
      el('td', {}, `${seconds(n.silent_seconds)} ago`),
      el('td', {}, time(n.started_at)),
    )), 6, 'no node registered')
    fill('channels', overview.top_channels.map((ch) => el('tr', {},
      el('td', {}, ch.channel_name),
      el('td', {}, ch.connections),
      el('td', {}, ch.users),
    )), 3, 'no channel joined')
    fill('audit', overview.audit.map((a) => el('tr', { dataset: { kind: a.kind } },
      el('td', {}, time(a.at)),
      el('td', {}, a.kind),
      el('td', {}, a.node_id ?? ''),
      el('td', {}, a.remote_addr ?? ''),
      el('td', { class: 'detail' }, JSON.stringify(a.detail)),
    )), 5, 'no audit record')
  }
  refreshConnections(sample)
}

// ---- connections and the kick button (the admin API) --------------------------------------

function refreshConnections(sample) {
  const key = `${sample.connections.cluster}/${sample.connections.node}`
  const due = Date.now() - view.connectionsAt > CONNECTIONS_REFRESH_MS
  if (view.connectionsLoading || (key === view.connectionsKey && !due)) return
  view.connectionsKey = key
  loadConnections()
}

async function loadConnections() {
  view.connectionsLoading = true
  view.connectionsAt = Date.now()
  try {
    const response = await fetch('/admin/api/connections', {
      headers: authorization(),
      cache: 'no-store',
      credentials: 'omit',
    })
    if (response.status === 401 || response.status === 403) {
      showSignIn(await refusal(response))
      return
    }
    if (!response.ok) {
      $('connections-note').textContent = `(the admin API answered ${response.status})`
      return
    }
    const body = await response.json()
    const list = body.connections ?? []
    const total = body.total ?? list.length
    $('connections-note').textContent = total > list.length ? `(${list.length} of ${total})` : `(${total})`
    fill('connections', list.map(connectionRow), 7, 'no connection')
  } catch (e) {
    $('connections-note').textContent = '(the admin API did not answer)'
  } finally {
    view.connectionsLoading = false
  }
}

function connectionRow(c) {
  const id = c.connection_id
  const kick = el('button', { type: 'button', class: 'kick', dataset: { connection: id } }, 'Kick')
  kick.addEventListener('click', () => disconnect(id, kick))
  return el('tr', { dataset: { connection: id } },
    el('td', { class: 'id', title: id }, shortId(id)),
    el('td', {}, c.node_id ?? ''),
    el('td', {}, c.remote_addr ?? ''),
    el('td', { class: 'id', title: c.user_id ?? '' }, c.user_id ? shortId(c.user_id) : ''),
    el('td', {}, Array.isArray(c.channels) ? c.channels.length : (c.channels ?? '')),
    el('td', {}, time(c.connected_at)),
    el('td', {}, kick),
  )
}

async function disconnect(id, button) {
  button.disabled = true
  button.textContent = 'Kicking…'
  try {
    const response = await fetch(`/admin/api/connections/${encodeURIComponent(id)}/disconnect`, {
      method: 'POST',
      headers: authorization(),
      cache: 'no-store',
      credentials: 'omit',
    })
    if (response.status === 401 || response.status === 403) {
      showSignIn(await refusal(response))
      return
    }
    const body = await response.json().catch(() => ({}))
    // 200: this node is closing it; 202: the node holding it was asked to.
    button.textContent = response.ok
      ? (response.status === 202 ? 'Requested' : 'Kicked')
      : 'Failed'
    kickResult(id, response.ok ? 'kicked' : 'failed', body.message ?? `the admin API answered ${response.status}`)
  } catch (e) {
    button.textContent = 'Failed'
    kickResult(id, 'failed', 'the admin API did not answer')
  }
  loadConnections()
}

/** Says what became of the last kick (its row leaves the list at the next refresh). */
function kickResult(id, result, message) {
  const note = $('kick-result')
  note.dataset.connection = id
  note.dataset.result = result
  note.textContent = `${shortId(id)}: ${message}`
}

// ---- charts ---------------------------------------------------------------------------------

function drawCharts() {
  const points = view.points
  const cap = view.sample?.connections.cap
  const warnAt = view.sample?.connections.warn_at
  drawChart($('connections-chart'), points, [{ key: 'connections', color: '#2f6fde' }], {
    max: cap,
    marks: warnAt == null ? [] : [{ value: warnAt, color: '#c2410c' }],
  })
  drawChart($('messages-chart'), points, [{ key: 'messages_per_second', color: '#2f6fde' }], {})
  drawChart($('latency-chart'), points, [
    { key: 'latency_p99_ms', color: '#c2410c' },
    { key: 'latency_p50_ms', color: '#8a56d8' },
  ], {})
}

/** Lines of `series` over `points` (gaps where a value is null), from 0 to the largest value. */
function drawChart(canvas, points, series, options) {
  const ratio = window.devicePixelRatio || 1
  const width = canvas.clientWidth
  const height = canvas.clientHeight
  if (width === 0 || height === 0) return
  canvas.width = Math.round(width * ratio)
  canvas.height = Math.round(height * ratio)
  const g = canvas.getContext('2d')
  g.setTransform(ratio, 0, 0, ratio, 0, 0)
  g.clearRect(0, 0, width, height)
  const pad = { left: 34, right: 6, top: 8, bottom: 14 }
  const w = width - pad.left - pad.right
  const h = height - pad.top - pad.bottom
  let max = options.max ?? 0
  for (const s of series) {
    for (const p of points) {
      const v = p[s.key]
      if (v != null && v > max) max = v
    }
  }
  if (max <= 0) max = 1
  const y = (v) => pad.top + h - (v / max) * h
  // The newest point at the right edge; the chart fills from the right as points arrive.
  const offset = HISTORY_POINTS - points.length
  const x = (i) => pad.left + ((offset + i) / (HISTORY_POINTS - 1)) * w

  g.strokeStyle = '#e3e6eb'
  g.fillStyle = '#667085'
  g.font = '10px system-ui, sans-serif'
  g.lineWidth = 1
  for (const v of [0, max / 2, max]) {
    g.beginPath()
    g.moveTo(pad.left, Math.round(y(v)) + 0.5)
    g.lineTo(pad.left + w, Math.round(y(v)) + 0.5)
    g.stroke()
    g.fillText(label(v), 2, y(v) + 3)
  }
  g.fillText(`${Math.round((HISTORY_POINTS * sampleSeconds()) / 60)} min`, pad.left, height - 2)
  for (const mark of options.marks ?? []) {
    g.strokeStyle = mark.color
    g.setLineDash([4, 3])
    g.beginPath()
    g.moveTo(pad.left, y(mark.value))
    g.lineTo(pad.left + w, y(mark.value))
    g.stroke()
    g.setLineDash([])
  }
  for (const s of series) {
    g.strokeStyle = s.color
    g.lineWidth = 1.5
    g.beginPath()
    let drawing = false
    points.forEach((p, i) => {
      const v = p[s.key]
      if (v == null) {
        drawing = false
        return
      }
      if (drawing) g.lineTo(x(i), y(v))
      else g.moveTo(x(i), y(v))
      drawing = true
    })
    g.stroke()
    // A value between two gaps is a line of no length: draw it as a dot.
    g.fillStyle = s.color
    points.forEach((p, i) => {
      const v = p[s.key]
      if (v != null && points[i - 1]?.[s.key] == null && points[i + 1]?.[s.key] == null) {
        g.beginPath()
        g.arc(x(i), y(v), 2, 0, 2 * Math.PI)
        g.fill()
      }
    })
  }
}

function label(v) {
  return v >= 10 ? String(Math.round(v)) : v.toFixed(1)
}

/** Seconds between the last two points (the sample interval), 1 before there are two. */
function sampleSeconds() {
  const n = view.points.length
  if (n < 2) return 1
  return Math.max(0.1, (view.points[n - 1].at_ms - view.points[n - 2].at_ms) / 1000)
}

// ---- start ----------------------------------------------------------------------------------

function start() {
  $('credential-form').addEventListener('submit', (event) => {
    event.preventDefault()
    const value = $('credential').value.trim()
    $('credential').value = ''
    if (!value) return
    sessionStorage.setItem(STORAGE_KEY, value)
    $('sign-in-error').textContent = ''
    run()
  })
  $('sign-out').addEventListener('click', () => showSignIn(''))
  window.addEventListener('resize', drawCharts)
  if (credential()) run()
  else showSignIn('')
}

start()
