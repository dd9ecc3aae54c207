-- wrk script: POST the 56-byte event of the ingest ratio (docs/benchmarks.md)
--   wrk -t1 -c32 -d8s -s scripts/wrk/event.lua http://localhost:8080/v1/events
wrk.method = "POST"
wrk.body = '{"type":"bench.ingest","subject":"wrk","data":{"n":123}}'
wrk.headers["Content-Type"] = "application/json"
