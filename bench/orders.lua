-- One checkout per request for wrk and wrk2 (bench/orders.py --wrk): POST to the order-processor, each request
-- with an Idempotency-Key of its own, the order bodies given as arguments taken in turn.
--   NEXUS_BENCH_AUTHORIZATION="Bearer ..." wrk2 -t2 -c16 -d20s -R25 --latency -s bench/orders.lua URL -- BODY...
-- (the token comes from the environment: a command line is visible to every user of the machine).
-- Each thread has its own Lua state: its keys start with 16 random hex digits read from /dev/urandom, then count.

local bodies = {}
local prefix = ""
local sent = 0
local authorization = assert(os.getenv("NEXUS_BENCH_AUTHORIZATION"), "NEXUS_BENCH_AUTHORIZATION is not set")

function init(args)
   for i = 1, #args do
      bodies[i] = args[i]
   end
   local f = assert(io.open("/dev/urandom", "rb"))
   local raw = f:read(8)
   f:close()
   prefix = raw:gsub(".", function(c) return string.format("%02x", c:byte()) end)
end

function request()
   sent = sent + 1
   local headers = { ["Content-Type"] = "application/json", ["Idempotency-Key"] = prefix .. "-" .. sent,
                     ["Authorization"] = authorization }
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   return wrk.format("POST", wrk.path, headers, bodies[(sent - 1) % #bodies + 1])
end
