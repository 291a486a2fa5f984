-- wrk script for bench/load.sh.
--
--   wrk ... -s callbacks.lua URL -- BODIES_FILE THREADS   POSTs callbacks
--   wrk ... -s callbacks.lua URL -- "" THREADS PATH       GETs of PATH
--   wrk ... -s callbacks.lua URL                          plain requests
--
-- In PATH, "{n}" becomes a number of 12 digits that differs for every
-- request of the run (thread k of THREADS counts k, k+THREADS, ...), so
-- that each request is, say, a new order, yet all have the same length.
-- With a file of JSON bodies (one per line), thread k of THREADS POSTs
-- lines k, k+THREADS, k+2*THREADS, ... in turn: the threads' slices are
-- disjoint, so no body is sent twice in a run unless a thread runs out of
-- lines and wraps around, which is counted as "repeats". Every request is
-- formatted before the run so that wrk spends its CPU on sending.
-- Either way, answers other than 200 are counted, and done() prints one
-- machine-readable line:
--   RESULT requests=N duration_us=N rps=N non200=N repeats=N errors=N lines=N

local threads = {}

function setup(thread)
   thread:set("id", #threads)
   table.insert(threads, thread)
end

function init(args)
   non200 = 0
   repeats = 0
   lines = 0
   pos = 0
   sent = 0
   reqs = nil
   local file, nthreads = args[1], tonumber(args[2] or "1")
   if file == nil or file == "" then
      local path = args[3]
      if path ~= nil and path ~= "" then
         local at = path:find("{n}", 1, true)
         if at == nil then
            error("no {n} in " .. path)
         end
         before, after, step = path:sub(1, at - 1), path:sub(at + 3), nthreads
      end
      return
   end
   local headers = { ["Content-Type"] = "application/json" }
   reqs = {}
   local i = 0
   for line in io.lines(file) do
      if i % nthreads == id and line ~= "" then
         reqs[#reqs + 1] = wrk.format("POST", nil, headers, line)
      end
      i = i + 1
   end
   lines = #reqs
   if lines == 0 then
      error("no bodies for thread " .. id .. " in " .. file)
   end
end

function request()
   if reqs == nil then
      if before == nil then
         return wrk.format()
      end
      local n = id + step * sent
      sent = sent + 1
      return wrk.format("GET", before .. string.format("%012d", n) .. after)
   end
   sent = sent + 1
   pos = pos + 1
   if pos > lines then
      pos = 1
   end
   return reqs[pos]
end

function response(status, headers, body)
   if status ~= 200 then
      non200 = non200 + 1
   end
end

function done(summary, latency, requests)
   local bad, rep, n = 0, 0, 0
   for _, t in ipairs(threads) do
      bad = bad + t:get("non200")
      n = n + t:get("lines")
      -- requests beyond a thread's lines resend bodies it already sent
      local extra = t:get("sent") - t:get("lines")
      if t:get("lines") > 0 and extra > 0 then
         rep = rep + extra
      end
   end
   local errs = summary.errors
   local e = errs.connect + errs.read + errs.write + errs.status + errs.timeout
   io.write(string.format("RESULT requests=%d duration_us=%d rps=%.1f non200=%d repeats=%d errors=%d lines=%d\n",
      summary.requests, summary.duration, summary.requests / (summary.duration / 1e6), bad, rep, e, n))
end
