-- wrk script: POST a JSON array of 100 such events, one batch a request
--   wrk -t1 -c32 -d8s -s scripts/wrk/batch.lua http://localhost:8080/v1/events:batch
local events = {}
for i = 1, 100 do
	events[i] = '{"type":"bench.ingest","subject":"wrk","data":{"n":' .. i .. '}}'
end
wrk.method = "POST"
wrk.body = "[" .. table.concat(events, ",") .. "]"
wrk.headers["Content-Type"] = "application/json"
