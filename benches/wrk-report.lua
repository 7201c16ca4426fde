-- wrk's end-of-run hook for benches/compare.sh's wrk-* scenarios: writes the run's result as
-- the JSON sg-load writes (rps, requests, errors, p50/p99/p99.9/max in microseconds), to the
-- file named by WRK_JSON, so the summary reads both alike. wrk is closed loop and does not
-- correct for coordinated omission: its percentiles are of the responses it waited for.
done = function(summary, latency, requests)
   local e = summary.errors
   local errors = e.connect + e.read + e.write + e.status + e.timeout
   local secs = summary.duration / 1e6
   local f = assert(io.open(os.getenv("WRK_JSON"), "w"))
   f:write(string.format(
      '{"rps": %.1f, "requests": %d, "errors": %d, "errors_by_kind": {"connect": %d, ' ..
      '"read": %d, "write": %d, "status": %d, "timeout": %d}, "p50_us": %d, "p99_us": %d, ' ..
      '"p999_us": %d, "max_us": %d, "load_generator": "wrk"}\n',
      summary.requests / secs, summary.requests, errors, e.connect, e.read, e.write, e.status,
      e.timeout, latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
      latency.max))
   f:close()
end
