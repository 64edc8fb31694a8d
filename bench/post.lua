-- POSTs a small JSON webhook on every connection and, when the run is over,
-- prints one line "kwp-bench sent=N status=CODE:COUNT,..." for run.py.
-- The request() hook counts what was sent so that requests cut off by the end
-- of the run (sent but never answered) are known.

wrk.method = "POST"
wrk.body = '{"action":"opened","number":42,"repository":{"id":1296269,"full_name":"octo/hello"},"sender":{"login":"octo"}}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["User-Agent"] = "kwp-bench"
wrk.headers["X-GitHub-Event"] = "pull_request"

local threads = {}
local prepared = nil

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  sent = 0
  statuses = {}
  prepared = wrk.format()
end

function request()
  sent = sent + 1
  return prepared
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local total_sent = 0
  local counts = {}
  for _, thread in ipairs(threads) do
    total_sent = total_sent + thread:get("sent")
    for status, count in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + count
    end
  end
  local parts = {}
  for status, count in pairs(counts) do
    table.insert(parts, status .. ":" .. count)
  end
  io.write(string.format(
    "kwp-bench sent=%d status=%s timeouts=%d connect_errors=%d read_errors=%d write_errors=%d p50_us=%d p99_us=%d\n",
    total_sent, table.concat(parts, ","), summary.errors.timeout, summary.errors.connect,
    summary.errors.read, summary.errors.write, latency:percentile(50), latency:percentile(99)))
end
