-- wrk script for bench/http: HTTP/1.1 pipelining.
-- Every write sends DEPTH GET requests for the URL's path back to back on one
-- keep-alive connection; wrk counts each response as one request.
-- Usage: wrk ... -s bench/pipeline.lua URL -- [DEPTH]   (default 16)

local batch

function init(args)
    local depth = tonumber(args[1]) or 16
    local reqs = {}
    for i = 1, depth do
        reqs[i] = wrk.format("GET", wrk.path)
    end
    batch = table.concat(reqs)
end

function request()
    return batch
end
